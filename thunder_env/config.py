"""The manager's typed configuration. Environment variables are read only by entry points."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ManagerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Labels group what one deployment owns; reconcile only ever touches its own namespace.
    namespace: str = Field(default="default", pattern=r"^[a-zA-Z0-9_.-]{1,63}$")
    # Reclaim a sandbox nobody used for this long, leases or not (None: never).
    idle_ttl_s: float | None = Field(default=3600.0, gt=0)
    # Keep a sandbox whose last lease went for this long, for reuse by the same spec or by id.
    linger_s: float = Field(default=0.0, ge=0)
    reaper_interval_s: float = Field(default=15.0, gt=0)
    default_exec_timeout_s: float = Field(default=600.0, gt=0)
    max_exec_timeout_s: float = Field(default=24 * 3600.0, gt=0)
    output_limit_bytes: int = Field(default=1 << 20, ge=1024)
    max_read_bytes: int = Field(default=64 << 20, ge=1024)
    # Refuse new sandboxes below these host reserves instead of letting the host fall over.
    min_free_disk_bytes: int = Field(default=2 << 30, ge=0)
    min_free_memory_bytes: int = Field(default=512 << 20, ge=0)
    # Free disk a snapshot or a template build must leave on the engine's data root (None: min_free_disk_bytes).
    snapshot_reserve_bytes: int | None = Field(default=None, ge=0)
    # Each sandbox's writable layer (the files it writes outside its mounts). Enforced by the storage
    # driver where it can (overlay2 on xfs with pquota), else measured every disk_check_interval_s: a
    # sandbox past it is destroyed and its leases end with the reason. None: no limit.
    sandbox_disk_limit_bytes: int | None = Field(default=10 << 30, ge=1 << 20)
    disk_check_interval_s: float = Field(default=30.0, gt=0)
    port_host: str = "127.0.0.1"
    reconcile_on_start: bool = True
    # The longest the manager waits for one engine call it makes itself (removing a sandbox, listing
    # its containers): past it the engine is reported stuck (EngineStuckError) and the work retried.
    engine_timeout_s: float = Field(default=120.0, gt=0)
    # A failed removal is retried after this long, doubling up to a minute, until it succeeds.
    destroy_retry_s: float = Field(default=1.0, gt=0)
    # Every this long, sandboxes whose container stopped or vanished (dockerd restart, OOM of the
    # init, `docker kill`) are reported dead to their programs, and containers of this manager it
    # already removed once are removed again (None: no health check).
    health_interval_s: float | None = Field(default=10.0, gt=0)
    # Warm pools (thunder_env.pools). Every spec acquired gets a pool sized by demand within
    # [pool_min_size, pool_max_size]; 0/0 means pools only for specs given to configure_pool().
    pool_min_size: int = Field(default=0, ge=0)
    pool_max_size: int = Field(default=0, ge=0)
    # Warm sandboxes started at once across all pools: refills must not starve the programs.
    pool_refill_concurrency: int = Field(default=2, ge=1)
    # Demand is the acquire rate over this window (times the measured refill time: the target size).
    pool_demand_window_s: float = Field(default=60.0, gt=0)
    # A prepared environment nobody acquires is reclaimed after this long.
    prepare_ttl_s: float = Field(default=600.0, gt=0)
    # Templates: the time limit of one setup step.
    template_step_timeout_s: float = Field(default=1800.0, gt=0)
    # Template builds running at once (each one is a container); the others wait their turn.
    template_build_concurrency: int = Field(default=2, ge=1)
    # Freeze the sandbox while it is committed (a consistent snapshot of files being written).
    snapshot_pause: bool = True
    # Snapshots no sandbox, program or pool uses are evicted, oldest first, while the disk this
    # manager owns (its sandboxes' writable layers + its snapshots' own layers) exceeds the budget.
    # None: no budget (only unheld snapshots are removed).
    disk_budget_bytes: int | None = Field(default=50 << 30, ge=0)
    # The engine's size data (/system/df) is reused for this long: it walks every writable layer.
    disk_usage_cache_s: float = Field(default=2.0, ge=0)
    # Sandboxes started at once by fork().
    fork_concurrency: int = Field(default=4, ge=1)
