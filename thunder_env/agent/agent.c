/*
 * thunder-agent: runs commands for the Thunder manager inside one sandbox.
 *
 *   thunder-agent supervise SOCKET SANDBOX_ID [-- COMMAND...]
 *   thunder-agent serve SOCKET SANDBOX_ID
 *
 * `supervise` is the container's main process (under docker-init): it starts `serve`, restarts it
 * with a short backoff when it dies, and exits on SIGTERM/SIGINT. Given a COMMAND (a sandbox spec
 * with its own main command), it runs that too and ends with it, so the container lives as long as
 * the user's command did before.
 *
 * `serve` listens on a Unix socket in a per-sandbox directory bind-mounted from the host: no network
 * is used and no other sandbox can see the socket. One connection carries one request, as frames of
 * 1 type byte + 4-byte big-endian length + payload (see thunder_env/agent/protocol.py). The server reads
 * requests in one poll loop; pings and kill requests are answered inline (no fork: a kill must work
 * at the pids limit); a run request forks a handler that starts the command in its own session,
 * forwards its output as it comes, enforces the timeout and kills the command's whole tree when the
 * client goes away.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1
#define MARKER_VAR "THUNDER_EXEC_ID="

/* Request frames (client -> agent). */
#define REQ_HELLO 'H'   /* u8 protocol version + the sandbox id the client means to reach */
#define REQ_ARG 'A'     /* one argv element */
#define REQ_ENV 'V'     /* one "KEY=VALUE" entry, overriding the agent's own environment */
#define REQ_WORKDIR 'W' /* directory to run in */
#define REQ_TIMEOUT 'T' /* u64 milliseconds */
#define REQ_STDIN 'I'   /* a chunk of stdin */
#define REQ_STDIN_END 'Z' /* stdin is attached (even if empty) and complete */
#define REQ_RUN 'R'
#define REQ_KILL 'K' /* kill every process whose environment carries THUNDER_EXEC_ID=<payload> */
#define REQ_PING 'P'

/* Response frames (agent -> client). */
#define RESP_STARTED 'S' /* u32 pid of the command */
#define RESP_STDOUT 'O'
#define RESP_STDERR 'E'
#define RESP_EXIT 'X'    /* i32 exit code (128+signal when killed) + u8 timed_out */
#define RESP_FAILURE 'F' /* u8 kind + message; the command did not start */
#define RESP_PONG 'Q'    /* u8 protocol version + u32 pid + sandbox id */
#define RESP_KILLED 'D'  /* u32 number of processes killed */

#define FAIL_PROTOCOL 1
#define FAIL_IDENTITY 2
#define FAIL_FORK 3
#define FAIL_CHDIR 4
#define FAIL_EXEC 5
#define FAIL_TOO_LARGE 6
#define FAIL_INTERNAL 7

#define MAX_FRAME (8u << 20)         /* one frame's payload */
#define MAX_META (8u << 20)          /* argv + env + workdir of one request */
#define MAX_STDIN (256u << 20)       /* stdin is buffered before the command starts */
#define MAX_CONNS 512                /* requests being read at once */
#define REQUEST_DEADLINE_MS 30000    /* a client must finish sending its request within this */
#define READ_CHUNK 65536
#define OUT_HIGH_WATER (1u << 20)    /* stop reading the command's pipes while the client lags */
#define DRAIN_IDLE_MS 100            /* after exit, stop when background writers stay quiet this long */
#define DRAIN_MAX_MS 2000            /* ...or after this long at most */
#define SOCKET_CHECK_MS 1000         /* re-create the socket if someone removed or replaced it */
#define FLUSH_DELAY_MS 2             /* frames wait this long to travel together: a short command's */
#define FLUSH_BYTES 65536            /* started + output + exit wake the manager once, not thrice */

static const char *g_sandbox_id;

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                                */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logmsg(const char *fmt, const char *arg) {
    /* The container log is the only place the agent can speak; keep it to real trouble. */
    dprintf(2, "thunder-agent[%d]: ", (int)getpid());
    dprintf(2, fmt, arg);
    dprintf(2, "\n");
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void *xrealloc(void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (!p) {
        logmsg("%s", "out of memory");
        _exit(70);
    }
    return p;
}

typedef struct {
    uint8_t *data;
    size_t start, len, cap; /* live bytes are data[start, start+len) */
} buffer_t;

static void buf_reserve(buffer_t *b, size_t extra) {
    if (b->start + b->len + extra <= b->cap) return;
    if (b->start) { /* compact first */
        memmove(b->data, b->data + b->start, b->len);
        b->start = 0;
        if (b->len + extra <= b->cap) return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_append(buffer_t *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->data + b->start + b->len, data, n);
    b->len += n;
}

static void buf_consume(buffer_t *b, size_t n) {
    b->start += n;
    b->len -= n;
    if (!b->len) b->start = 0;
}

static void buf_free(buffer_t *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

static void frame_append(buffer_t *b, uint8_t type, const void *payload, size_t n) {
    uint8_t header[5];
    header[0] = type;
    put_u32(header + 1, (uint32_t)n);
    buf_append(b, header, 5);
    if (n) buf_append(b, payload, n);
}

/* Best effort, for the small replies the server sends inline on a non-blocking socket. */
static void send_frame_now(int fd, uint8_t type, const void *payload, size_t n) {
    buffer_t b = {0};
    frame_append(&b, type, payload, n);
    size_t off = 0;
    while (off < b.len) {
        ssize_t w = send(fd, b.data + off, b.len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, 1000) <= 0) break;
            continue;
        }
        if (w <= 0) break;
        off += (size_t)w;
    }
    buf_free(&b);
}

static void send_failure(int fd, uint8_t kind, const char *message) {
    size_t n = strlen(message);
    uint8_t *payload = xrealloc(NULL, n + 1);
    payload[0] = kind;
    memcpy(payload + 1, message, n);
    send_frame_now(fd, RESP_FAILURE, payload, n + 1);
    free(payload);
}

/* ------------------------------------------------------------------------------------------ */
/* killing by marker: every process whose environment carries THUNDER_EXEC_ID=<marker>          */

static int environ_has(int fd, const char *entry, size_t entry_len, buffer_t *scratch) {
    scratch->start = scratch->len = 0;
    for (;;) {
        buf_reserve(scratch, READ_CHUNK);
        ssize_t n = read(fd, scratch->data + scratch->len, READ_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        scratch->len += (size_t)n;
        if (scratch->len > (16u << 20)) break;
    }
    const uint8_t *p = scratch->data, *end = scratch->data + scratch->len;
    while (p < end) {
        const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
        size_t len = nul ? (size_t)(nul - p) : (size_t)(end - p);
        if (len == entry_len && memcmp(p, entry, entry_len) == 0) return 1;
        p += len + 1;
    }
    return 0;
}

/* Scans /proc until a pass finds nothing more (forks racing a pass are caught by the next one). */
static uint32_t kill_marked(const char *marker) {
    size_t entry_len = strlen(MARKER_VAR) + strlen(marker);
    char *entry = xrealloc(NULL, entry_len + 1);
    snprintf(entry, entry_len + 1, "%s%s", MARKER_VAR, marker);
    buffer_t scratch = {0};
    pid_t killed[4096]; /* counted once each, though a dying process shows up in the next pass too */
    uint32_t total = 0;
    pid_t self = getpid();
    for (int round = 0; round < 6; round++) {
        uint32_t found = 0;
        DIR *proc = opendir("/proc");
        if (!proc) break;
        struct dirent *de;
        while ((de = readdir(proc))) {
            if (de->d_name[0] < '1' || de->d_name[0] > '9') continue;
            pid_t pid = (pid_t)atoi(de->d_name);
            if (pid == self) continue;
            char path[64];
            snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue; /* gone, or another user's: not ours to kill */
            int match = environ_has(fd, entry, entry_len, &scratch);
            close(fd);
            if (!match || kill(pid, SIGKILL) != 0) continue;
            int seen = 0;
            for (uint32_t k = 0; k < total && k < 4096; k++) seen |= killed[k] == pid;
            if (seen) continue;
            if (total < 4096) killed[total] = pid;
            total++;
            found++;
        }
        closedir(proc);
        if (!found) break;
    }
    buf_free(&scratch);
    free(entry);
    return total;
}

/* ------------------------------------------------------------------------------------------ */
/* requests                                                                                     */

typedef struct {
    char **items;
    size_t n, cap;
} strlist_t;

static void strlist_add(strlist_t *l, const uint8_t *s, size_t n) {
    if (l->n + 2 > l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->items = xrealloc(l->items, l->cap * sizeof(char *));
    }
    char *copy = xrealloc(NULL, n + 1);
    memcpy(copy, s, n);
    copy[n] = 0;
    l->items[l->n++] = copy;
    l->items[l->n] = NULL;
}

static void strlist_free(strlist_t *l) {
    for (size_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

enum action { ACT_NONE, ACT_RUN, ACT_KILL, ACT_PING, ACT_FAIL };

typedef struct {
    int fd;
    int64_t opened_ms;
    buffer_t in;
    int hello_ok;
    strlist_t argv, env;
    char *workdir;
    char *marker; /* of a kill request */
    uint64_t timeout_ms;
    int has_timeout;
    buffer_t stdin_data;
    int stdin_attached;
    size_t meta_bytes;
    uint8_t fail_kind;
    char fail_message[256];
} conn_t;

static void conn_free(conn_t *c) {
    if (c->fd >= 0) close(c->fd);
    buf_free(&c->in);
    strlist_free(&c->argv);
    strlist_free(&c->env);
    free(c->workdir);
    free(c->marker);
    buf_free(&c->stdin_data);
    free(c);
}

static enum action fail(conn_t *c, uint8_t kind, const char *message) {
    c->fail_kind = kind;
    snprintf(c->fail_message, sizeof c->fail_message, "%s", message);
    return ACT_FAIL;
}

static int has_nul(const uint8_t *p, size_t n) { return memchr(p, 0, n) != NULL; }

/* Applies one frame to the request; returns the action it completes, if any. */
static enum action apply_frame(conn_t *c, uint8_t type, const uint8_t *p, size_t n) {
    if (!c->hello_ok) {
        if (type != REQ_HELLO || n < 1) return fail(c, FAIL_PROTOCOL, "the first frame must be a hello");
        if (p[0] != PROTOCOL_VERSION) return fail(c, FAIL_PROTOCOL, "unsupported protocol version");
        if (n - 1 != strlen(g_sandbox_id) || memcmp(p + 1, g_sandbox_id, n - 1) != 0)
            return fail(c, FAIL_IDENTITY, "this agent serves another sandbox");
        c->hello_ok = 1;
        return ACT_NONE;
    }
    if (type == REQ_STDIN) {
        if (c->stdin_data.len + n > MAX_STDIN) return fail(c, FAIL_TOO_LARGE, "stdin is larger than the agent takes");
        buf_append(&c->stdin_data, p, n);
        c->stdin_attached = 1;
        return ACT_NONE;
    }
    c->meta_bytes += n;
    if (c->meta_bytes > MAX_META) return fail(c, FAIL_TOO_LARGE, "the request is too large");
    switch (type) {
    case REQ_ARG:
    case REQ_ENV:
        if (has_nul(p, n)) return fail(c, FAIL_PROTOCOL, "argv and env entries cannot contain NUL");
        if (type == REQ_ENV && !memchr(p, '=', n)) return fail(c, FAIL_PROTOCOL, "env entries are KEY=VALUE");
        strlist_add(type == REQ_ARG ? &c->argv : &c->env, p, n);
        return ACT_NONE;
    case REQ_WORKDIR:
        if (has_nul(p, n) || !n) return fail(c, FAIL_PROTOCOL, "bad workdir");
        free(c->workdir);
        c->workdir = xrealloc(NULL, n + 1);
        memcpy(c->workdir, p, n);
        c->workdir[n] = 0;
        return ACT_NONE;
    case REQ_TIMEOUT:
        if (n != 8) return fail(c, FAIL_PROTOCOL, "a timeout is 8 bytes");
        c->timeout_ms = ((uint64_t)get_u32(p) << 32) | get_u32(p + 4);
        c->has_timeout = 1;
        return ACT_NONE;
    case REQ_STDIN_END:
        c->stdin_attached = 1;
        return ACT_NONE;
    case REQ_RUN:
        if (!c->argv.n) return fail(c, FAIL_PROTOCOL, "nothing to run: argv is empty");
        return ACT_RUN;
    case REQ_KILL:
        if (!n || has_nul(p, n)) return fail(c, FAIL_PROTOCOL, "bad marker");
        c->marker = xrealloc(NULL, n + 1);
        memcpy(c->marker, p, n);
        c->marker[n] = 0;
        return ACT_KILL;
    case REQ_PING:
        return ACT_PING;
    default:
        return fail(c, FAIL_PROTOCOL, "unknown frame type");
    }
}

/* Parses every complete frame buffered so far. */
static enum action parse_frames(conn_t *c) {
    while (c->in.len >= 5) {
        const uint8_t *h = c->in.data + c->in.start;
        uint32_t n = get_u32(h + 1);
        if (n > MAX_FRAME) return fail(c, FAIL_TOO_LARGE, "frame too large");
        if (c->in.len < 5 + (size_t)n) break;
        enum action a = apply_frame(c, h[0], h + 5, n);
        buf_consume(&c->in, 5 + (size_t)n);
        if (a != ACT_NONE) return a;
    }
    return ACT_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* the per-exec handler (a forked child of the server)                                          */

static int g_sigchld_w = -1;

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    if (write(g_sigchld_w, "c", 1) < 0) { /* full pipe: a wake-up is already pending */ }
    errno = saved;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void reset_signals(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++) sigaction(s, &dfl, NULL); /* SIGKILL/SIGSTOP fail harmlessly */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* The agent's own environment (the container's) with the request's entries laid over it. */
static char **build_env(const strlist_t *over) {
    extern char **environ;
    size_t base = 0;
    while (environ[base]) base++;
    char **env = xrealloc(NULL, (base + over->n + 1) * sizeof(char *));
    size_t n = 0;
    for (size_t i = 0; i < base; i++) env[n++] = environ[i];
    for (size_t j = 0; j < over->n; j++) {
        const char *entry = over->items[j];
        size_t key_len = (size_t)(strchr(entry, '=') - entry) + 1; /* with the '=' */
        size_t i = 0;
        while (i < n && strncmp(env[i], entry, key_len) != 0) i++;
        env[i] = (char *)entry;
        if (i == n) n++;
    }
    env[n] = NULL;
    return env;
}

typedef struct {
    int stage; /* FAIL_CHDIR or FAIL_EXEC */
    int err;
} start_status_t;

static void child_exec(conn_t *c, char **env, int in_r, int out_w, int err_w, int status_w) {
    setsid(); /* own session and process group: the timeout kills the group at once */
    reset_signals();
    int null_fd = -1;
    if (in_r < 0) in_r = null_fd = open("/dev/null", O_RDONLY);
    dup2(in_r, 0);
    dup2(out_w, 1);
    dup2(err_w, 2);
    if (null_fd > 2) close(null_fd);
#ifdef SYS_close_range
    syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */); /* whatever the agent inherited */
#endif
    start_status_t st = {0, 0};
    if (c->workdir && chdir(c->workdir) < 0) {
        st.stage = FAIL_CHDIR;
        st.err = errno;
        if (write(status_w, &st, sizeof st) < 0) { /* the handler sees EOF and a failed exit */ }
        _exit(126);
    }
    extern char **environ;
    environ = env; /* execvp looks PATH up in the command's environment, as the engine's exec does */
    execvp(c->argv.items[0], c->argv.items);
    st.stage = FAIL_EXEC;
    st.err = errno;
    if (write(status_w, &st, sizeof st) < 0) { /* as above */ }
    _exit(127);
}

static void kill_tree(pid_t pid, const char *marker) {
    kill(-pid, SIGKILL);
    if (marker) kill_marked(marker); /* children that left the process group */
}

static const char *find_marker(const strlist_t *env) {
    size_t prefix = strlen(MARKER_VAR);
    for (size_t i = 0; i < env->n; i++)
        if (strncmp(env->items[i], MARKER_VAR, prefix) == 0 && env->items[i][prefix]) return env->items[i] + prefix;
    return NULL;
}

static int flush_out(int fd, buffer_t *out) {
    while (out->len) {
        ssize_t w = send(fd, out->data + out->start, out->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return 0;
        if (w <= 0) return -1;
        buf_consume(out, (size_t)w);
    }
    return 0;
}

static void read_pipe(int *fd, uint8_t type, buffer_t *out, int64_t *last_data) {
    uint8_t chunk[READ_CHUNK];
    ssize_t n = read(*fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        close(*fd);
        *fd = -1;
        return;
    }
    frame_append(out, type, chunk, (size_t)n);
    *last_data = now_ms();
}

/* Whether the manager has shut down its side: it no longer waits for this request. */
static int peer_gone(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static void run_handler(conn_t *c) {
    prctl(PR_SET_NAME, "thunder-exec");
    int conn = c->fd;
    int wake[2], out_p[2], err_p[2], in_p[2] = {-1, -1}, status_p[2];
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) < 0 || pipe2(out_p, O_CLOEXEC) < 0 || pipe2(err_p, O_CLOEXEC) < 0 ||
        (c->stdin_attached && pipe2(in_p, O_CLOEXEC) < 0) || pipe2(status_p, O_CLOEXEC) < 0) {
        send_failure(conn, errno == EMFILE || errno == ENFILE ? FAIL_FORK : FAIL_INTERNAL, strerror(errno));
        _exit(0);
    }
    g_sigchld_w = wake[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);

    char **env = build_env(&c->env);
    const char *marker = find_marker(&c->env);
    pid_t pid = fork();
    if (pid < 0) {
        char message[128];
        snprintf(message, sizeof message, "fork failed: %s", strerror(errno));
        send_failure(conn, FAIL_FORK, message);
        _exit(0);
    }
    if (pid == 0) child_exec(c, env, in_p[0], out_p[1], err_p[1], status_p[1]);
    close(out_p[1]);
    close(err_p[1]);
    close(status_p[1]);
    if (in_p[0] >= 0) close(in_p[0]);

    start_status_t st;
    ssize_t got;
    do got = read(status_p[0], &st, sizeof st);
    while (got < 0 && errno == EINTR);
    close(status_p[0]);
    if (got == (ssize_t)sizeof st) {
        char message[512];
        if (st.stage == FAIL_CHDIR)
            snprintf(message, sizeof message, "chdir to \"%s\" failed: %s", c->workdir, strerror(st.err));
        else if (st.err == ENOENT && !strchr(c->argv.items[0], '/'))
            snprintf(message, sizeof message, "exec: \"%s\": executable file not found in $PATH", c->argv.items[0]);
        else
            snprintf(message, sizeof message, "exec: \"%s\": %s", c->argv.items[0], strerror(st.err));
        waitpid(pid, NULL, 0);
        send_failure(conn, (uint8_t)st.stage, message);
        _exit(0);
    }

    buffer_t out = {0};
    uint8_t pid_be[4];
    put_u32(pid_be, (uint32_t)pid);
    frame_append(&out, RESP_STARTED, pid_be, 4);
    set_nonblock(conn);
    set_nonblock(out_p[0]);
    set_nonblock(err_p[0]);
    if (in_p[1] >= 0) set_nonblock(in_p[1]);
    int out_fd = out_p[0], err_fd = err_p[0], in_fd = in_p[1];
    size_t in_off = 0;
    const uint8_t *in_data = c->stdin_data.data + c->stdin_data.start;
    size_t in_len = c->stdin_data.len;
    if (in_fd >= 0 && !in_len) {
        close(in_fd);
        in_fd = -1;
    }
    int exited = 0, status = 0, timed_out = 0;
    int64_t deadline = c->has_timeout ? now_ms() + (int64_t)c->timeout_ms : -1;
    int64_t exit_at = 0, last_data = 0, pending_since = now_ms();

    for (;;) {
        int64_t now = now_ms();
        if (out.len >= OUT_HIGH_WATER) last_data = exit_at = now; /* the client lags: pipes wait, not expire */
        if (exited && ((out_fd < 0 && err_fd < 0) || now - exit_at >= DRAIN_MAX_MS || now - last_data >= DRAIN_IDLE_MS))
            break;
        if (!exited && !timed_out && deadline >= 0 && now >= deadline) {
            timed_out = 1;
            kill_tree(pid, marker);
        }
        if (!out.len) pending_since = -1;
        else if (pending_since < 0) pending_since = now;
        int flush_due = out.len && (exited || out.len >= FLUSH_BYTES || now - pending_since >= FLUSH_DELAY_MS);
        struct pollfd fds[5];
        int nfds = 0, i_conn = -1, i_out = -1, i_err = -1, i_in = -1;
        fds[i_conn = nfds++] = (struct pollfd){.fd = conn, .events = POLLIN | (flush_due ? POLLOUT : 0)};
        fds[nfds++] = (struct pollfd){.fd = wake[0], .events = POLLIN};
        if (out_fd >= 0 && out.len < OUT_HIGH_WATER) fds[i_out = nfds++] = (struct pollfd){.fd = out_fd, .events = POLLIN};
        if (err_fd >= 0 && out.len < OUT_HIGH_WATER) fds[i_err = nfds++] = (struct pollfd){.fd = err_fd, .events = POLLIN};
        if (in_fd >= 0) fds[i_in = nfds++] = (struct pollfd){.fd = in_fd, .events = POLLOUT};
        int64_t wait = -1;
        if (exited) {
            int64_t a = exit_at + DRAIN_MAX_MS - now, b = last_data + DRAIN_IDLE_MS - now;
            wait = a < b ? a : b;
        } else if (deadline >= 0 && !timed_out) {
            wait = deadline - now;
        }
        if (out.len && !flush_due) {
            int64_t until_flush = pending_since + FLUSH_DELAY_MS - now;
            if (wait < 0 || until_flush < wait) wait = until_flush;
        }
        if (wait < 0 && (exited || (deadline >= 0 && !timed_out) || out.len)) wait = 0;
        if (poll(fds, (nfds_t)nfds, (int)(wait > 60000 ? 60000 : wait)) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        short ce = fds[i_conn].revents;
        if (ce & POLLIN) {
            uint8_t scratch[512];
            ssize_t n = recv(conn, scratch, sizeof scratch, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) ce |= POLLHUP;
        }
        if ((ce & POLLOUT) && flush_out(conn, &out) < 0) ce |= POLLHUP;
        if (ce & (POLLHUP | POLLERR)) {
            /* The client went away (the manager cancelled the call): nobody will read this command. */
            if (!exited) kill_tree(pid, marker);
            _exit(0);
        }
        if (i_out >= 0 && fds[i_out].revents) read_pipe(&out_fd, RESP_STDOUT, &out, &last_data);
        if (i_err >= 0 && fds[i_err].revents) read_pipe(&err_fd, RESP_STDERR, &out, &last_data);
        if (i_in >= 0 && fds[i_in].revents) {
            ssize_t w = fds[i_in].revents & POLLOUT ? write(in_fd, in_data + in_off, in_len - in_off) : -1;
            if (w > 0) in_off += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || in_off == in_len) {
                close(in_fd); /* all written, or the command closed its stdin */
                in_fd = -1;
            }
        }
        if (!exited) {
            char drain[64];
            while (read(wake[0], drain, sizeof drain) > 0) {}
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = 1;
                exit_at = last_data = now_ms();
                if (in_fd >= 0) {
                    close(in_fd);
                    in_fd = -1;
                }
            }
        }
        now = now_ms();
        if (out.len && (out.len >= FLUSH_BYTES || (pending_since >= 0 && now - pending_since >= FLUSH_DELAY_MS)) &&
            flush_out(conn, &out) < 0)
            _exit(0);
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
    uint8_t exit_payload[5];
    put_u32(exit_payload, (uint32_t)code);
    exit_payload[4] = (uint8_t)timed_out;
    frame_append(&out, RESP_EXIT, exit_payload, 5);
    int64_t give_up = now_ms() + 10000;
    while (out.len && now_ms() < give_up) {
        struct pollfd p = {.fd = conn, .events = POLLOUT};
        if (poll(&p, 1, 1000) < 0 && errno != EINTR) break;
        if (p.revents & (POLLHUP | POLLERR)) break;
        if (flush_out(conn, &out) < 0) break;
    }
    _exit(0);
}

/* ------------------------------------------------------------------------------------------ */
/* the server                                                                                   */

static int listen_on(const char *path, struct stat *bound, int quiet) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        logmsg("socket path too long: %s", path);
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    unlink(path); /* a stale socket of an earlier server */
    mode_t old_mask = umask(077); /* the socket is its owner's only; commands keep the usual umask */
    int bound_ok = bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    umask(old_mask);
    if (!bound_ok || listen(fd, 1024) < 0 || stat(path, bound) < 0) {
        if (!quiet) logmsg("cannot listen on %s", path);
        close(fd);
        return -1;
    }
    return fd;
}

static int serve(const char *path) {
    prctl(PR_SET_NAME, "thunder-agent"); /* started through /proc/self/exe: "exe" otherwise */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_flags = SA_NOCLDWAIT; /* handlers are reaped by the kernel */
    sigaction(SIGCHLD, &sa, NULL);
    struct stat bound;
    int lfd = listen_on(path, &bound, 0);
    if (lfd < 0) return 1;
    int relisten_failed = 0;
    conn_t *conns[MAX_CONNS];
    size_t nconns = 0;
    int64_t last_check = now_ms();
    for (;;) {
        struct pollfd fds[MAX_CONNS + 1];
        fds[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (size_t i = 0; i < nconns; i++) fds[i + 1] = (struct pollfd){.fd = conns[i]->fd, .events = POLLIN};
        if (poll(fds, (nfds_t)(nconns + 1), SOCKET_CHECK_MS) < 0 && errno != EINTR) return 1;
        int64_t now = now_ms();
        /* Requests first: a closed connection must leave its slot before new ones are counted. */
        size_t kept = 0;
        for (size_t i = 0; i < nconns; i++) {
            conn_t *c = conns[i];
            short re = fds[i + 1].revents;
            enum action a = ACT_NONE;
            int drop = now - c->opened_ms > REQUEST_DEADLINE_MS;
            for (int reads = 0; !drop && re && a == ACT_NONE && reads < 16; reads++) {
                buf_reserve(&c->in, 4 * READ_CHUNK);
                ssize_t n = recv(c->fd, c->in.data + c->in.start + c->in.len, 4 * READ_CHUNK, MSG_DONTWAIT);
                if (n > 0) {
                    c->in.len += (size_t)n;
                    a = parse_frames(c);
                } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                    drop = 1;
                } else {
                    break;
                }
            }
            if (a == ACT_FAIL) {
                send_failure(c->fd, c->fail_kind, c->fail_message);
                drop = 1;
            } else if (a == ACT_PING) {
                uint8_t pong[5 + 256];
                size_t id_len = strlen(g_sandbox_id);
                pong[0] = PROTOCOL_VERSION;
                put_u32(pong + 1, (uint32_t)getpid());
                memcpy(pong + 5, g_sandbox_id, id_len);
                send_frame_now(c->fd, RESP_PONG, pong, 5 + id_len);
                drop = 1;
            } else if (a == ACT_KILL) {
                uint8_t count[4];
                put_u32(count, kill_marked(c->marker));
                send_frame_now(c->fd, RESP_KILLED, count, 4);
                drop = 1;
            } else if (a == ACT_RUN && peer_gone(c->fd)) {
                /* The manager gave up on this request before we read it (we were stopped or slow)
                   and may run it another way: running it now could do its work twice. */
                drop = 1;
            } else if (a == ACT_RUN) {
                pid_t pid = fork();
                if (pid == 0) {
                    close(lfd);
                    for (size_t j = 0; j < nconns; j++)
                        if (conns[j] != c) close(conns[j]->fd);
                    run_handler(c);
                }
                if (pid < 0) {
                    char message[128];
                    snprintf(message, sizeof message, "fork failed: %s", strerror(errno));
                    send_failure(c->fd, FAIL_FORK, message);
                }
                drop = 1;
            }
            if (drop)
                conn_free(c);
            else
                conns[kept++] = c;
        }
        nconns = kept;
        if (fds[0].revents & POLLIN) {
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) break;
                if (nconns >= MAX_CONNS) {
                    close(fd);
                    continue;
                }
                conn_t *c = xrealloc(NULL, sizeof *c);
                memset(c, 0, sizeof *c);
                c->fd = fd;
                c->opened_ms = now;
                conns[nconns++] = c;
            }
        }
        if (now - last_check >= SOCKET_CHECK_MS) {
            /* Someone in the sandbox removed or replaced the socket: listen again where the host looks. */
            last_check = now;
            struct stat st;
            if (stat(path, &st) < 0 || st.st_ino != bound.st_ino || st.st_dev != bound.st_dev) {
                int fresh = listen_on(path, &bound, relisten_failed); /* logged once per streak */
                relisten_failed = fresh < 0;
                if (fresh >= 0) {
                    close(lfd);
                    lfd = fresh;
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* the supervisor                                                                               */

static volatile sig_atomic_t g_stop;

static void on_stop(int sig) { g_stop = sig; }

static pid_t start_server(const char *self, const char *path) {
    pid_t pid = fork();
    if (pid == 0) {
        reset_signals();
        execl("/proc/self/exe", self, "serve", path, g_sandbox_id, (char *)NULL);
        execl(self, self, "serve", path, g_sandbox_id, (char *)NULL); /* /proc not mounted */
        logmsg("cannot exec %s", self);
        _exit(127);
    }
    return pid;
}

static void sleep_ms(int64_t ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL); /* a stop signal cuts it short */
}

static int supervise(const char *self, const char *path, char **command) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop; /* no SA_RESTART: waitpid returns on a stop signal */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    pid_t cmd = -1;
    if (command) {
        cmd = fork();
        if (cmd == 0) {
            reset_signals();
            execvp(command[0], command);
            logmsg("cannot run the sandbox command %s", command[0]);
            _exit(127);
        }
    }
    pid_t server = start_server(self, path);
    int64_t started = now_ms(), backoff = 20;
    int stopping = 0;
    for (;;) {
        if (g_stop && !stopping) {
            stopping = 1;
            if (server > 0) kill(server, SIGTERM);
            if (cmd <= 0) return 0;
            kill(cmd, g_stop); /* the sandbox's own command decides when it is done */
        }
        if (server <= 0 && !stopping) {
            sleep_ms(backoff); /* fork failed (pids limit?) or the server died: try again shortly */
            if (g_stop) continue;
            backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
            server = start_server(self, path);
            started = now_ms();
            continue;
        }
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == ECHILD) return 0;
            continue;
        }
        if (pid == cmd) {
            if (server > 0) kill(server, SIGTERM);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (pid == server) {
            if (now_ms() - started > 5000) backoff = 20;
            logmsg("%s", "server died; restarting it");
            server = -1;
        }
    }
}

static int usage(void) {
    dprintf(2, "usage: thunder-agent supervise SOCKET SANDBOX_ID [-- COMMAND...]\n"
               "       thunder-agent serve SOCKET SANDBOX_ID\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 4 || strlen(argv[3]) > 200) return usage();
    g_sandbox_id = argv[3];
    if (strcmp(argv[1], "serve") == 0 && argc == 4) return serve(argv[2]);
    if (strcmp(argv[1], "supervise") == 0) {
        if (argc == 4) return supervise(argv[0], argv[2], NULL);
        if (argc > 5 && strcmp(argv[4], "--") == 0) return supervise(argv[0], argv[2], argv + 5);
    }
    return usage();
}
