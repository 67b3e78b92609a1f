"""Pure logic of the image builder: recipe hashing, apt sources, the base root filesystem."""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
import struct
import sys
import tarfile
from pathlib import Path

import aiodocker
import pytest

from thunder_common.locks import file_lock
from thunder_env.errors import BackendUnavailableError
from thunder_env.images import ensure_images, procs
from thunder_env.images.apt_sources import (
    AptSource,
    choose_debian_source,
    parse_deb822,
    parse_one_line,
    read_apt_sources,
    read_os_codename,
)
from thunder_env.images.busybox import busybox_rootfs, check_static_elf
from thunder_env.images.debootstrap import (
    debootstrap_params,
    mounts_under,
    processes_using,
    remove_stale_trees,
    resolve_source,
)
from thunder_env.images.engine import import_changes
from thunder_env.images.errors import (
    AptSourceError,
    ImageBuildError,
    RecipeError,
    RecipeNotFoundError,
    ToolMissingError,
)
from thunder_env.images.finish import add_user, prune
from thunder_env.images.hashing import recipe_hash
from thunder_env.images.recipes import (
    BusyboxRecipe,
    DebootstrapRecipe,
    load_recipe,
    load_recipes,
    select_recipes,
)

REPO_IMAGES = Path(__file__).resolve().parents[2] / "images"
PARAMS = {"kind": "busybox", "busybox_sha256": "ab" * 32}


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "base"
    shutil.copytree(REPO_IMAGES / "base", d)
    return d


# --- recipes -------------------------------------------------------------------------------


def test_repo_recipes_load() -> None:
    recipes = load_recipes(REPO_IMAGES)
    assert {"base", "python"} <= set(recipes)
    assert recipes["base"].tag == "thunder/base:latest"
    assert recipes["python"].tag == "thunder/python:latest"
    assert isinstance(recipes["base"].spec, BusyboxRecipe)
    python = recipes["python"].spec
    assert isinstance(python, DebootstrapRecipe)
    assert python.variant == "minbase"
    assert {"python3", "git", "bash", "coreutils"} <= set(python.include)
    for recipe in recipes.values():
        assert recipe.spec.image.workdir == "/workspace"
        assert recipe.spec.user.uid == 1000 and recipe.spec.user.name == "sandbox"


def test_unknown_recipe_key_is_rejected(recipe_dir: Path) -> None:
    path = recipe_dir / "recipe.toml"
    path.write_text(path.read_text() + '\nsurprise = "typo"\n')
    with pytest.raises(RecipeError, match="surprise"):
        load_recipe(recipe_dir)


def test_bad_toml_names_the_file(recipe_dir: Path) -> None:
    (recipe_dir / "recipe.toml").write_text("kind = \n")
    with pytest.raises(RecipeError, match=r"recipe\.toml: not valid TOML"):
        load_recipe(recipe_dir)


def test_unknown_recipe_name_lists_known_ones() -> None:
    recipes = load_recipes(REPO_IMAGES)
    with pytest.raises(RecipeNotFoundError, match="known recipes: base, python"):
        select_recipes(recipes, ["nope"])
    assert [r.name for r in select_recipes(recipes, ["python", "base", "python"])] == ["python", "base"]


# --- recipe hash ---------------------------------------------------------------------------


def test_recipe_hash_is_stable(recipe_dir: Path, tmp_path: Path) -> None:
    first = recipe_hash(recipe_dir, PARAMS)
    copy = tmp_path / "copy" / "base"
    shutil.copytree(recipe_dir, copy)
    assert recipe_hash(recipe_dir, dict(reversed(list(PARAMS.items())))) == first
    assert recipe_hash(copy, PARAMS) == first  # the folder's location does not matter
    assert len(first) == 64


def test_recipe_hash_follows_every_input(recipe_dir: Path) -> None:
    seen = {recipe_hash(recipe_dir, PARAMS)}

    def changed() -> bool:
        digest = recipe_hash(recipe_dir, PARAMS)
        new = digest not in seen
        seen.add(digest)
        return new

    toml = recipe_dir / "recipe.toml"
    toml.write_text(toml.read_text().replace('"infinity"', '"3600"'))
    assert changed()
    (recipe_dir / "Dockerfile").unlink()
    assert changed()
    (recipe_dir / "extra" / "deeper").mkdir(parents=True)
    (recipe_dir / "extra" / "deeper" / "motd").write_text("hello")
    assert changed()
    (recipe_dir / "extra" / "deeper" / "motd").rename(recipe_dir / "extra" / "motd")
    assert changed()
    (recipe_dir / "extra" / "motd").chmod(0o755)
    assert changed()
    assert recipe_hash(recipe_dir, {**PARAMS, "busybox_sha256": "cd" * 32}) not in seen
    assert recipe_hash(recipe_dir, {**PARAMS, "suite": "trixie"}) not in seen


def test_recipe_hash_ignores_hidden_files(recipe_dir: Path) -> None:
    before = recipe_hash(recipe_dir, PARAMS)
    (recipe_dir / ".recipe.toml.swp").write_bytes(b"\0editor")
    (recipe_dir / "__pycache__").mkdir()
    (recipe_dir / "__pycache__" / "x.pyc").write_bytes(b"x")
    assert recipe_hash(recipe_dir, PARAMS) == before


# --- apt sources ---------------------------------------------------------------------------

ONE_LINE = """\
# the release
deb http://mirror.example/debian bookworm main contrib  # trailing comment
deb-src http://mirror.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/example.gpg] http://mirror.example/debian bookworm-updates main
deb http://security.example/debian-security bookworm-security main
#deb http://old.example/debian bullseye main
deb [ trusted=yes ] file:/srv/repo ./
"""

DEB822 = """\
Types: deb deb-src
# a comment inside a paragraph
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://third.example/apt
Suites: nodistro
Components: main
Enabled: no

Types: deb
URIs: http://inline.example/debian
Suites: trixie
Components: main non-free
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----
"""


def test_parse_one_line_format() -> None:
    entries = parse_one_line(ONE_LINE, "sources.list")
    assert [(e.type, e.uri, e.suite) for e in entries] == [
        ("deb", "http://mirror.example/debian", "bookworm"),
        ("deb-src", "http://mirror.example/debian", "bookworm"),
        ("deb", "http://mirror.example/debian", "bookworm-updates"),
        ("deb", "http://security.example/debian-security", "bookworm-security"),
        ("deb", "file:/srv/repo", "./"),
    ]
    assert entries[0].components == ("main", "contrib")
    assert entries[0].origin == "sources.list:2"
    assert entries[2].signed_by == "/usr/share/keyrings/example.gpg"
    assert entries[4].components == ()


def test_parse_deb822_format() -> None:
    entries = parse_deb822(DEB822, "debian.sources")
    assert [(e.type, e.suite, e.enabled) for e in entries] == [
        ("deb", "bookworm", True),
        ("deb", "bookworm-updates", True),
        ("deb-src", "bookworm", True),
        ("deb-src", "bookworm-updates", True),
        ("deb", "nodistro", False),
        ("deb", "trixie", True),
    ]
    assert entries[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert entries[0].origin == "debian.sources:1"
    assert entries[-1].signed_by is None  # an inline key is no keyring path
    assert entries[-1].components == ("main", "non-free")


def test_choose_prefers_host_release_over_pockets_and_third_parties() -> None:
    third_party = AptSource("deb", "https://vendor.example/apt", "stable", ("main",), origin="a.list:1")
    sources = [third_party, *parse_deb822(DEB822, "debian.sources")]
    chosen = choose_debian_source(sources, codename="bookworm", known_suites={"bookworm", "trixie"})
    assert (chosen.mirror, chosen.suite) == ("http://mirror.example/debian", "bookworm")
    assert chosen.keyring == "/usr/share/keyrings/debian-archive-keyring.gpg"
    # No codename match: a suite debootstrap knows beats the third-party one listed first.
    chosen = choose_debian_source(sources, codename="noble", known_suites={"bookworm", "trixie"})
    assert chosen.suite == "bookworm"


def test_choose_skips_pockets_disabled_and_missing_components() -> None:
    sources = parse_one_line(ONE_LINE)
    assert choose_debian_source(sources).suite == "bookworm"
    assert choose_debian_source(sources, components=("main", "contrib")).suite == "bookworm"
    with pytest.raises(AptSourceError, match="--mirror URL --suite SUITE"):
        choose_debian_source(sources, components=("main", "non-free"))
    with pytest.raises(AptSourceError):
        choose_debian_source([s for s in parse_deb822(DEB822) if s.suite == "nodistro"])


def test_read_apt_sources_reads_both_formats_in_apt_order(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://first.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "b.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "a.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "c.list.disabled").write_text("deb http://no.example/ x main\n")
    entries = read_apt_sources(tmp_path)
    assert entries[0].uri == "http://first.example/debian"
    origins = [e.origin.split(":")[0] for e in entries]
    assert origins.index(str(tmp_path / "sources.list.d/a.list")) < origins.index(
        str(tmp_path / "sources.list.d/b.sources")
    )
    assert not any("no.example" in e.uri for e in entries)


def test_read_os_codename(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text('NAME="Debian GNU/Linux"\nVERSION_CODENAME=bookworm\nID=debian\n')
    assert read_os_codename(path) == "bookworm"
    assert read_os_codename(tmp_path / "missing") is None


# --- base root filesystem ------------------------------------------------------------------

FAKE_BUSYBOX = b"\x7fELF" + bytes(60)
APPLETS = ["sh", "ls", "cat", "grep", "sleep", "env", "busybox", "[", "[["]


def _base_recipe() -> BusyboxRecipe:
    spec = load_recipe(REPO_IMAGES / "base").spec
    assert isinstance(spec, BusyboxRecipe)
    return spec


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_base_rootfs_layout() -> None:
    data = busybox_rootfs(FAKE_BUSYBOX, APPLETS, _base_recipe())
    members = _members(data)
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["bin/["].linkname == "busybox"
    assert "bin/busybox" in members and members["bin/busybox"].isfile()  # not replaced by a link
    assert members["usr/bin"].linkname == "../bin"
    assert members["tmp"].mode == 0o1777
    assert members["root"].mode == 0o700
    for owned in ("workspace", "home/sandbox"):
        assert members[owned].isdir() and (members[owned].uid, members[owned].gid) == (1000, 1000)
    assert {m.mtime for m in members.values()} == {946_684_800}
    assert {m.uname for m in members.values()} == {""}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
        group = tar.extractfile("etc/group").read().decode()  # type: ignore[union-attr]
    assert passwd.splitlines()[0].startswith("root:x:0:0:")
    assert "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh" in passwd.splitlines()
    assert "sandbox:x:1000:" in group.splitlines()
    # Every parent directory precedes its children (docker import needs no implicit dirs).
    names = list(members)
    for name in names:
        parent = name.rpartition("/")[0]
        assert not parent or names.index(parent) < names.index(name)


def test_base_rootfs_is_deterministic() -> None:
    recipe = _base_recipe()
    assert busybox_rootfs(FAKE_BUSYBOX, APPLETS, recipe) == busybox_rootfs(
        FAKE_BUSYBOX, list(reversed(APPLETS)), recipe
    )


def _elf64(with_interp: bool) -> bytes:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 32, 64)  # program headers right after the ELF header
    struct.pack_into("<HH", header, 54, 56, 2)
    phdrs = struct.pack("<I52x", 1) + struct.pack("<I52x", 3 if with_interp else 1)
    return bytes(header) + phdrs


def test_dynamic_busybox_is_refused_with_the_fix() -> None:
    check_static_elf(_elf64(with_interp=False))
    with pytest.raises(ToolMissingError, match="apt-get install busybox-static"):
        check_static_elf(_elf64(with_interp=True))
    with pytest.raises(ToolMissingError, match="not an ELF"):
        check_static_elf(b"#!/bin/sh\necho hi\n" + bytes(64))


def test_import_changes_quote_values() -> None:
    changes = import_changes(
        ["sleep", "infinity"], "/workspace", {"PATH": "/bin", "GREETING": 'say "hi"'}, {"a.b": "c d"}
    )
    assert changes == [
        'CMD ["sleep", "infinity"]',
        "WORKDIR /workspace",
        'ENV PATH="/bin"',
        'ENV GREETING="say \\"hi\\""',
        'LABEL a.b="c d"',
    ]


# --- finishing a debootstrap tree ------------------------------------------------------------


def test_prune_keeps_licences_and_never_leaves_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    doc = root / "usr/share/doc/bash"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("GPL")
    (doc / "README").write_text("docs")
    (doc / "examples").mkdir()
    (doc / "examples" / "x").write_text("x")
    (root / "usr/share/doc/escape").symlink_to(outside)  # an absolute link: must not be followed
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/dpkg.log").write_text("log")
    (root / "var/cache").symlink_to(outside)  # a linked folder on the way: the match is outside
    prune(root, ["usr/share/doc/*", "var/log/*.log", "var/cache/*"])
    assert (doc / "copyright").read_text() == "GPL"
    assert not (doc / "README").exists() and not (doc / "examples").exists()
    assert not (root / "usr/share/doc/escape").is_symlink()
    assert (outside / "precious").exists()
    assert not (root / "var/log/dpkg.log").exists() and (root / "var/log").is_dir()


def test_add_user_refuses_a_path_escaping_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (tmp_path / "elsewhere").mkdir()
    (root / "home").symlink_to(tmp_path / "elsewhere")
    spec = load_recipe(REPO_IMAGES / "python").spec
    with pytest.raises(ImageBuildError, match="escapes the root filesystem"):
        add_user(root, spec.user, spec.image.workdir, "python")
    assert not any((tmp_path / "elsewhere").iterdir())


# --- machinery -------------------------------------------------------------------------------


def test_explicit_mirror_and_suite_need_no_apt_sources_and_stay_out_of_the_hash() -> None:
    spec = load_recipe(REPO_IMAGES / "python").spec
    assert isinstance(spec, DebootstrapRecipe)
    source = resolve_source(spec, "http://mirror.example/debian/", "trixie")
    assert (source.mirror, source.suite, source.origin) == ("http://mirror.example/debian", "trixie", "command line")
    params = debootstrap_params(source, "amd64")
    assert params == {"kind": "debootstrap", "suite": "trixie", "arch": "amd64"}


def test_mounts_under_finds_nested_mounts_deepest_first(tmp_path: Path) -> None:
    target = tmp_path / "my root"
    target.mkdir()
    escaped = str(target).replace(" ", "\\040")
    info = tmp_path / "mountinfo"
    info.write_text(
        f"22 1 0:21 / /proc rw - proc proc rw\n"
        f"90 22 0:50 / {escaped}/proc rw - proc proc rw\n"
        f"91 90 0:51 / {escaped}/proc/sys/fs/binfmt_misc rw - binfmt_misc x rw\n"
        f"92 1 0:52 / {escaped}-other rw - tmpfs t rw\n"
    )
    assert mounts_under(target, info) == [f"{target}/proc/sys/fs/binfmt_misc", f"{target}/proc"]


async def test_unreachable_engine_says_how_to_start_it() -> None:
    async with aiodocker.Docker(url="unix:///nonexistent/docker.sock") as docker:
        with pytest.raises(BackendUnavailableError, match=r"ensure-system\.sh"):
            await ensure_images(docker, recipes=REPO_IMAGES)


async def test_file_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "x.lock"
    async with file_lock(lock) as held:
        assert held
        async with file_lock(lock, wait=False) as second:
            assert not second
    async with file_lock(lock, wait=False) as again:
        assert again


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


async def test_cancelled_child_takes_its_whole_process_group_along() -> None:
    pids: list[int] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await procs.run(["sh", "-c", "sleep 30 & echo $!; wait"], on_line=lambda line: pids.append(int(line)))
    assert pids
    for _ in range(50):
        if not _alive(pids[0]):
            break
        await asyncio.sleep(0.05)
    assert not _alive(pids[0]), "the grandchild outlived the cancelled build step"


async def test_stale_tree_of_a_killed_build_is_stopped_and_removed(tmp_path: Path) -> None:
    tree = tmp_path / "python-rootfs-abc123"
    (tree / "etc").mkdir(parents=True)
    keep = tmp_path / "python-other"  # not a scratch tree: untouched
    keep.mkdir()
    # Stands in for an orphaned debootstrap: a process naming the tree on its command line.
    orphan = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", str(tree / "etc")
    )
    try:
        assert orphan.pid in processes_using(tree)
        await remove_stale_trees(tmp_path, "python-rootfs-")
        async with asyncio.timeout(5):
            assert await orphan.wait() == -signal.SIGKILL
        assert not tree.exists() and keep.is_dir()
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()
