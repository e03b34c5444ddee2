"""Configuration: defaults -> /etc/slurm-flex/slurmflex.toml -> SLURMFLEX_* env -> CLI options.

Validation is strict: an unknown key or a bad value is a :class:`ConfigError` naming the file
(or environment variable), the key and the valid values. Environment overrides use
``SLURMFLEX_<SECTION>__<KEY>``, e.g. ``SLURMFLEX_DAEMON__STATE_DIR=/tmp/sfx``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from slurm_flex.battery.config import BatteryConfig
from slurm_flex.errors import ConfigError
from slurm_flex.grid.readings import Quantity
from slurm_flex.grid.registry import NO_PRICE, SignalRequest, provider_type, settings_tables
from slurm_flex.slurm.parsers import first_partition

DEFAULT_CONFIG_PATH = Path("/etc/slurm-flex/slurmflex.toml")
ENV_PREFIX = "SLURMFLEX_"
BUNDLED_FORECAST_NAME = "gb_national_2023-11-17_neso_forecast.csv"


def bundled_forecast() -> Path:
    """The recorded real GB forecast shipped with the package (see grid/data/README.md)."""
    return Path(str(resources.files("slurm_flex.grid") / "data" / BUNDLED_FORECAST_NAME))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Mode = Literal["shadow", "advise", "enforce"]


def _host_port_or_empty(value: str) -> str:
    if value:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 0.0.0.0:9862")
    return value


class DaemonConfig(_Section):
    mode: Mode = "enforce"
    interval_seconds: int = Field(300, ge=10, le=86400)
    # While Slurm cannot be reached, wait longer between tries, up to this.
    max_backoff_seconds: int = Field(1800, ge=10, le=86400)
    state_dir: Path = Path("/var/lib/slurm-flex")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    # Prometheus metrics endpoint, "host:port"; empty: off.
    metrics_listen: str = ""

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return _host_port_or_empty(value)


class SlurmConfig(_Section):
    backend: Literal["commands"] = "commands"
    bin_dir: Path | None = None
    slurm_conf: Path | None = None
    # Run every Slurm command inside this root (``chroot DIR``): a Slurm installed in a chroot
    # beside the host's own, as scripts/devcluster's 24.11 cluster is. bin_dir and slurm_conf
    # are then paths inside it.
    chroot: Path | None = None
    command_timeout_seconds: float = Field(30.0, gt=0, le=600)


class ForecastConfig(_Section):
    source: Literal["file"] = "file"
    path: Path = Field(default_factory=bundled_forecast)
    # Replay the file's first slot from this UTC time (demos, tests); unset: the file's own times.
    replay_from: datetime | None = None

    @field_validator("replay_from")
    @classmethod
    def _zoned(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2026-11-21T08:00:00Z")
        return value


def _providers_model() -> type[_Section]:
    """``[providers.*]``: one table per registered provider's settings (slurm_flex.grid.registry)."""
    fields: dict[str, Any] = {table: (model, model()) for table, model in settings_tables().items()}
    return create_model("ProvidersConfig", __base__=_Section, **fields)


if TYPE_CHECKING:
    ProvidersConfig = _Section
else:
    ProvidersConfig = _providers_model()


class _SignalTable(_Section):
    """A site's ``carbon`` or ``price`` table: a registered provider's name and what it needs."""

    QUANTITY: ClassVar[Quantity]
    provider: str

    @field_validator("provider")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name != NO_PRICE or cls.QUANTITY != "price":
            provider_type(cls.QUANTITY, name)  # ValueError naming the known providers
        return name

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.provider != NO_PRICE:
            provider_type(self.QUANTITY, self.provider).check(SignalRequest.of(self.QUANTITY, self))
        return self


class CarbonSignal(_SignalTable):
    QUANTITY: ClassVar[Quantity] = "carbon"
    region_id: int | None = None  # neso: a region (1-14; 15-18 are aggregates)
    postcode: str | None = None  # neso: an outward postcode, e.g. CB3
    zone: str | None = None  # electricitymaps: e.g. GB, DE, FR
    region: str | None = None  # watttime: e.g. CAISO_NORTH
    path: Path | None = None  # file
    replay_from: datetime | None = None  # file: replay its first slot from this UTC time


class PriceSignal(_SignalTable):
    QUANTITY: ClassVar[Quantity] = "price"
    provider: str = NO_PRICE
    region: str | None = None  # octopus-agile: the DNO region letter
    path: Path | None = None  # file
    replay_from: datetime | None = None


class SiteConfig(_Section):
    # Jobs in these partitions run at this site; empty: every partition no other site names.
    partitions: tuple[str, ...] = ()
    carbon: CarbonSignal
    price: PriceSignal = PriceSignal()
    # The federation cluster this site is ([federation]): its jobs are the jobs Slurm shows at
    # that cluster, whatever their partition, and its nodes that cluster's nodes.
    cluster: str | None = None


class FederationConfig(_Section):
    """Moving pending jobs between the clusters of a Slurm federation (sites with ``cluster``)."""

    enabled: bool = False
    # A move is made when the best window at the other site costs at least this share less than
    # the best at the job's site (a move restarts the job's age priority, and forecasts err).
    move_threshold: float = Field(0.10, ge=0.0, lt=1.0)
    max_moves_per_cycle: int = Field(20, ge=0, le=10000)
    # Jobs of these partitions may run at every site even when submitted to one cluster (a
    # site's "portable by default"); other jobs move only among the clusters they were submitted
    # to (``sbatch --clusters=a,b``, as Slurm shows it).
    portable_partitions: tuple[str, ...] = ()
    # A site whose grid-stress events also come from Beckn: each ACTIVE reduction contract is a
    # stress event there over its window (daemon.stress), shedding the most it committed; empty:
    # stress events come from `slurmflex stress` only.
    beckn_stress_site: str = ""


class SignalsConfig(_Section):
    # Keep planning on a provider's last answer for this long when it fails.
    max_forecast_age_hours: float = Field(6.0, gt=0, le=72)
    # Past a forecast's horizon: median of the same half-hour over this many past weeks...
    profile_weeks: int = Field(4, ge=1, le=12)
    # ... or, with less history, over this many past days.
    profile_days: int = Field(14, ge=1, le=60)
    # How far back history is fetched once a day to build profiles.
    history_days: int = Field(28, ge=1, le=90)
    # Forecasts are kept as issued (for accuracy reports) this long.
    retention_days: int = Field(60, ge=1, le=3650)


class PolicyConfig(_Section):
    safety_margin_seconds: int = Field(900, ge=0, le=86400)
    min_saving_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    # Carbon is priced into the objective next to the electricity price. The default is close
    # to the UK government's central carbon value for policy appraisal (about 250-270 GBP/t).
    carbon_price_gbp_per_tonne: float = Field(250.0, ge=0.0)
    # Whether the electricity price counts at all (sites on flat tariffs may say false).
    use_price: bool = True
    max_horizon_hours: float = Field(168.0, gt=0.0, le=24 * 31)
    # Plan against this share of the free nodes: the scheduler cannot pack jobs perfectly, and a
    # plan that fills every node spills past its deadlines (see the simulator).
    capacity_headroom: float = Field(0.9, gt=0.0, le=1.0)
    # Plan each job to start within this share of its slack; the rest is a buffer for the queue
    # and for work that arrives later with the same deadline.
    slack_use_fraction: float = Field(0.8, gt=0.0, le=1.0)
    # Jobs needing more than this share of the managed nodes are not deferred: a planned window
    # is not a reservation, and a big job can miss it while smaller work backfills.
    max_deferred_share: float = Field(0.5, gt=0.0, le=1.0)
    # Defer new work only while no job in the managed partitions waits for resources: a busy
    # machine has no cleaner window to offer, only a longer backlog.
    defer_only_when_queue_idle: bool = True
    # Keep room in planned windows for work not submitted yet: the last day's busy nodes, scaled
    # by utilisation (without it a busy machine's deferred work piles into the same windows as
    # new arrivals and deadlines are missed; see bench/results/simulate.txt).
    arrival_reserve: bool = True
    # Move a queued job with a deadline to the head of the queue (its Slurm priority set above
    # the rest, in order of latest safe start) once the queue would no longer start it in time;
    # its own priority is put back if that stops being possible. Jobs the head of the queue
    # cannot save either are left in place.
    expedite_at_risk: bool = True
    # Release (or move up) this many half-hours before the queue projection says it is too late.
    at_risk_margin_slots: int = Field(1, ge=0, le=48)
    # The run time plans are made with: "limit" (the job's time limit) or "predicted" (the mean
    # of the user's last two finished jobs, capped at the limit; Tsafrir et al. 2007). Deadlines
    # are always guarded with the time limit, so a wrong prediction costs saving, not deadlines.
    plan_runtime: Literal["limit", "predicted"] = "predicted"
    # Count a planned job for its node-seconds in each half-hour rather than a full half-hour of
    # nodes (a 5-minute job otherwise blocks a whole slot in the plan).
    fractional_occupancy: bool = True
    # Seconds the solver may spend per site and cycle.
    solve_time_limit: float = Field(10.0, gt=0.0, le=600.0)
    # "auto" picks the method per instance and certifies each plan with a lower bound; "fast"
    # (what `slurmflex simulate` uses by default) skips the bound.
    solver: Literal["auto", "fast"] = "auto"
    # Load shaping: each cycle, let only as much of the queued flexible work start as the
    # cleanest hours before its deadlines leave for now (a fluid plan of the whole queue and the
    # work expected to arrive, planner.shaping); the rest waits until the next cycle, keeping its
    # place. Never past a latest safe start: the queue is projected by time limits first.
    shape_load: bool = True
    # Shape on this share of the free nodes (the scheduler cannot pack every node).
    shape_headroom: float = Field(0.95, gt=0.0, le=1.0)
    # A job started now runs on: weigh each half-hour by the mean forecast over the queue's
    # typical run from it, at most this many half-hours.
    shape_span_slots: int = Field(12, ge=1, le=96)
    # Never hold back a job this close to its latest safe start (a big job needs time to gather
    # its nodes as they come free).
    shape_exempt_hours: float = Field(6.0, ge=0.0, le=168.0)
    # Hold nothing back while more queued jobs with deadlines wait than this (0: no limit; at most
    # Slurm's bf_max_job_test makes the guard's projection sound, at a cost in saving).
    shape_max_queue: int = Field(0, ge=0, le=100000)
    # The guard projects the queue by time limits ("limit") or by predicted run times
    # ("predicted"; jobs wider than shape_guard_wide_share of the machine then by time limits too).
    shape_guard_runtime: Literal["limit", "predicted"] = "limit"
    shape_guard_wide_share: float = Field(0.5, ge=0.0, le=1.0)
    # Also plan single flexible jobs into their cleanest windows (a begin time until then).
    defer_to_windows: bool = False


class SlackPolicy(_Section):
    """Per-partition or per-QOS flexibility; unset values fall back to the [flex] ones."""

    default_slack_hours: float | None = Field(None, ge=0)
    max_slack_hours: float | None = Field(None, ge=0)


class FlexConfig(_Section):
    """Which jobs are flexible and by how much (the submit hook and the daemon both apply it)."""

    grace_seconds: int = Field(120, ge=0, le=3600)
    partitions: tuple[str, ...] = ()
    exclude_partitions: tuple[str, ...] = ()
    exempt_users: tuple[str, ...] = ()
    exempt_accounts: tuple[str, ...] = ()
    invalid_request: Literal["accept", "reject"] = "accept"
    default_slack_hours: float = Field(0.0, ge=0)
    max_slack_hours: float = Field(168.0, ge=0)
    partition: dict[str, SlackPolicy] = Field(default_factory=dict)
    qos: dict[str, SlackPolicy] = Field(default_factory=dict)

    def slack_limits(self, partition: str | None, qos: str | None) -> tuple[float, float]:
        """(default, max) slack in hours for a job: QOS beats partition beats the global values."""
        default, maximum = self.default_slack_hours, self.max_slack_hours
        for layer in (self.partition.get(partition or ""), self.qos.get(qos or "")):
            if layer is not None:
                default = layer.default_slack_hours if layer.default_slack_hours is not None else default
                maximum = layer.max_slack_hours if layer.max_slack_hours is not None else maximum
        return default, maximum

    def manages(self, partition: str) -> bool:
        first = first_partition(partition)
        if first in self.exclude_partitions:
            return False
        return not self.partitions or first in self.partitions


class NodeType(_Section):
    node_idle_watts: float = Field(ge=0)
    node_max_watts: float = Field(ge=0)
    cpus_per_node: int = Field(ge=1)
    gpu_watts: float | None = Field(None, ge=0)


class PowerConfig(_Section):
    """The default node type's power model, other node types, and GPU models."""

    node_idle_watts: float = Field(120.0, ge=0)
    node_max_watts: float = Field(450.0, ge=0)
    cpus_per_node: int = Field(64, ge=1)
    gpu_watts: float = Field(300.0, ge=0)
    memory_watts_per_gb: float = Field(0.375, ge=0)
    node_types: dict[str, NodeType] = Field(default_factory=dict)
    partition_node_types: dict[str, str] = Field(default_factory=dict)
    gpu_model_watts: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_node_types(self) -> PowerConfig:
        for partition, name in self.partition_node_types.items():
            if name not in self.node_types:
                known = ", ".join(sorted(self.node_types)) or "none defined in [power.node_types]"
                raise ValueError(f"partition {partition!r} names node type {name!r}; known: {known}")
        return self


class MeasureConfig(_Section):
    """Measured power in the daemon: agents' pushes, Slurm's energy counters, a site meter."""

    enabled: bool = False
    # Node agents POST their samples here, "host:port"; empty: no agents.
    listen: str = ""
    # The shared bearer token agents send (a file only root and the service user can read).
    token_file: Path | None = None
    # Also read Slurm's own node power (acct_gather_energy plugins) once per cycle.
    slurm_energy: bool = False
    # `scontrol show node --json` (Slurm >= 23.02); false: the text form 22.05 has.
    slurm_energy_json: bool = False
    # A site meter: a command printing the site's power, or a URL answering it (JSON {"kw": ..} or a number).
    site_meter_command: tuple[str, ...] = ()
    site_meter_url: str = ""
    site_meter_unit: Literal["W", "kW"] = "kW"
    # Readings older than this are not used for a node's current power.
    max_age_seconds: int = Field(60, ge=5, le=3600)
    # Raw samples are folded into half-hour means after this long ...
    raw_retention_hours: int = Field(48, ge=1, le=24 * 30)
    # ... which are kept this long.
    retention_days: int = Field(90, ge=1, le=3650)
    # Correct the planner's power estimates with measured/estimated ratios of finished jobs.
    calibrate: bool = True

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return _host_port_or_empty(value)

    @model_validator(mode="after")
    def _token_with_listen(self) -> MeasureConfig:
        if self.listen and self.token_file is None:
            raise ValueError("listen needs token_file (agents authenticate with a shared token)")
        return self


class AgentConfig(_Section):
    """``slurmflex node-agent`` on each compute node."""

    # The daemon's [measure] listen address as a URL, e.g. http://slurmctld-host:9862
    push_url: str = ""
    token_file: Path | None = None
    # The Slurm node name this node reports as; empty: the short host name.
    node: str = ""
    interval_seconds: float = Field(10.0, ge=1.0, le=3600.0)
    # Where /sys is (tests and containers point it elsewhere).
    root: Path = Path("/")
    rapl: bool = True
    nvidia: Literal["auto", "smi", "nvml", "none"] = "auto"
    ipmi: Literal["none", "ipmitool", "freeipmi"] = "none"
    command_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Samples kept while the daemon cannot be reached (oldest dropped beyond this).
    buffer_samples: int = Field(10000, ge=100, le=1_000_000)


class LedgerConfig(_Section):
    """The verifiable record (slurm_flex.ledger): a transparency log of every decision."""

    enabled: bool = True
    # The site's Ed25519 signing key (made on first use, mode 0600); default <state_dir>/ledger.key.
    # Keep it out of backups that auditors see; its public half is <state_dir>/ledger/site.vkey.
    key_file: Path | None = None
    # The log's origin and key name, e.g. "hpc.example.ac.uk/slurm-flex"; default "<host fqdn>/slurm-flex".
    origin: str = ""
    # Records per JSON Lines file before a new file is started.
    records_per_file: int = Field(100_000, ge=1)
    # Keep this many record files, deleting older ones (the log still verifies from the first kept
    # file on, and its records can still be proved); 0: keep every file.
    keep_files: int = Field(0, ge=0)

    @field_validator("origin")
    @classmethod
    def _key_name(cls, value: str) -> str:
        if any(c.isspace() for c in value) or "+" in value:
            raise ValueError("must contain no spaces and no '+' (it is a signed-note key name)")
        return value


class SettlementConfig(_Section):
    """Settling flexibility orders (slurm_flex.settlement): what usage is modelled from where
    nothing measured it."""

    # Model a period's usage from the ledger's job runs and the power model where no meter or node
    # reading covers it (every such row is labelled modelled); false: such a period is a violation.
    model_usage: bool = True
    # The compute nodes behind the meter, by node type ("default": [power]'s own type): their idle
    # power is in every modelled period. Empty: usage is not modelled (it would be understated).
    nodes: dict[str, int] = Field(default_factory=dict)
    # What else the meter sees (storage, network, cooling), in watts, constant.
    other_watts: float = Field(0.0, ge=0)


class BecknConfig(_Section):
    """The Beckn endpoint (``slurmflex beckn serve``, slurm_flex.beckn) and its counterparties."""

    # Where the endpoint listens, "host:port".
    listen: str = "127.0.0.1:9871"
    # Our Beckn identity: subscriber id, the key id registered for it, and the key (base64 of
    # the 32-byte Ed25519 seed, or seed || public key), made by `slurmflex beckn keygen`.
    subscriber_id: str = ""
    key_id: str = "k1"
    private_key_file: Path | None = None
    # The URL counterparties reach us at (our bppUri/bapUri); default http://<listen>.
    public_url: str = ""
    # Whom we believe: a static trust file (JSON list of {subscriber_id, key_id, public_key, uri})
    # or a registry's /lookup (answers cached until their valid_until, at most cache seconds).
    trust_file: Path | None = None
    registry_url: str = ""
    registry_cache_seconds: int = Field(300, ge=0, le=86400)
    max_body_bytes: int = Field(1_000_000, ge=1024, le=64_000_000)
    clock_skew_seconds: int = Field(60, ge=0, le=600)
    # Our Authorization signatures are valid this long (expires = created + this).
    signature_validity_seconds: int = Field(300, ge=10, le=3600)
    network_id: str = "nfh.global/testnet-deg"
    # The price asked for flexibility, per kWh shed or absorbed, and its currency.
    price_per_kwh: float = Field(0.25, ge=0)
    currency: str = "GBP"
    # A quote (on_select/on_init) holds this long; a confirm after it is refused.
    offer_validity_seconds: int = Field(900, ge=10, le=86400)
    # Callbacks without a ttl are retried for this long before they are given up.
    callback_max_seconds: int = Field(3600, ge=1, le=7 * 86400)
    # Running jobs whose owners opted in with this in --comment may be suspended for an activation.
    suspendable_comment: str = "flex=suspendable"
    # Checkpointing jobs opt in with this instead: requeued held for the window, released after.
    requeue_comment: str = "flex=requeue"
    # Suspended work is resumed at least this long before its latest safe finish (deadline guard).
    resume_margin_seconds: int = Field(600, ge=0, le=86400)
    # How many half-hours ahead flexibility is offered.
    horizon_slots: int = Field(48, ge=1, le=336)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not value:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9871")
        return _host_port_or_empty(value)

    @model_validator(mode="after")
    def _one_trust_source(self) -> BecknConfig:
        if self.trust_file is not None and self.registry_url:
            raise ValueError("give trust_file or registry_url, not both")
        return self


class Config(_Section):
    daemon: DaemonConfig = DaemonConfig()
    slurm: SlurmConfig = SlurmConfig()
    forecast: ForecastConfig = ForecastConfig()
    policy: PolicyConfig = PolicyConfig()
    flex: FlexConfig = FlexConfig()
    power: PowerConfig = PowerConfig()
    providers: ProvidersConfig = ProvidersConfig()
    signals: SignalsConfig = SignalsConfig()
    measure: MeasureConfig = MeasureConfig()
    agent: AgentConfig = AgentConfig()
    ledger: LedgerConfig = LedgerConfig()
    settlement: SettlementConfig = SettlementConfig()
    beckn: BecknConfig = BecknConfig()
    # Sites and their signal providers; none: one site planned on [forecast] (a file).
    sites: dict[str, SiteConfig] = Field(default_factory=dict)
    federation: FederationConfig = FederationConfig()
    # An on-site battery planned with the jobs (slurm_flex.battery).
    battery: BatteryConfig = BatteryConfig()

    @model_validator(mode="after")
    def _settlement_node_types(self) -> Config:
        for name in self.settlement.nodes:
            if name != "default" and name not in self.power.node_types:
                known = ", ".join(["default", *sorted(self.power.node_types)])
                raise ValueError(f"[settlement] nodes names node type {name!r}; known: {known}")
        return self

    @model_validator(mode="after")
    def _sites_partition_the_cluster(self) -> Config:
        owner: dict[str, str] = {}
        # Sites that are federation clusters are told apart by cluster, not partition.
        catch_all = [name for name, site in self.sites.items() if not site.partitions and site.cluster is None]
        if len(catch_all) > 1:
            raise ValueError(f"sites {', '.join(catch_all)} all claim every partition; give all but one partitions")
        for name, site in self.sites.items():
            for partition in site.partitions:
                if partition in owner:
                    raise ValueError(f"partition {partition!r} is in sites {owner[partition]!r} and {name!r}")
                owner[partition] = name
        return self

    @model_validator(mode="after")
    def _battery_site(self) -> Config:
        if self.battery.site and self.battery.site not in self.sites:
            known = ", ".join(sorted(self.sites)) or "none: no [sites] are configured, leave site empty"
            raise ValueError(f"[battery] site {self.battery.site!r} is not a site; known: {known}")
        return self

    @model_validator(mode="after")
    def _beckn_stress_site(self) -> Config:
        site = self.federation.beckn_stress_site
        if site and site not in self.sites:
            known = ", ".join(sorted(self.sites)) or "none: no [sites] are configured, leave it empty"
            raise ValueError(f"[federation] beckn_stress_site {site!r} is not a site; known: {known}")
        return self

    def site_of_cluster(self, cluster: str) -> str | None:
        """The site that is this federation cluster (None: no site names it)."""
        return next((name for name, site in self.sites.items() if site.cluster and site.cluster == cluster), None)

    @property
    def site_clusters(self) -> dict[str, str]:
        """Site -> cluster, for the sites that are federation clusters."""
        return {name: site.cluster for name, site in self.sites.items() if site.cluster}

    def site_of(self, partition: str) -> str | None:
        """The site whose signals plan jobs of ``partition`` (None: no site claims it)."""
        first = first_partition(partition)
        for name, site in self.sites.items():
            if first in site.partitions:
                return name
        return next((name for name, site in self.sites.items() if not site.partitions), None)

    @property
    def state_db(self) -> Path:
        return self.daemon.state_dir / "state.sqlite3"


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Field names valid at ``loc`` (for 'unknown key' messages)."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        current = annotation
    return ", ".join(current.model_fields)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


_LIST_KEYS = frozenset({"partitions", "exclude_partitions", "exempt_users", "exempt_accounts"})


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Nested overrides from SLURMFLEX_SECTION__KEY[__SUBKEY...] variables, and where each came from."""
    layer: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        parsed: Any = tuple(p for p in value.split(",") if p) if path[-1] in _LIST_KEYS else value
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = parsed
        origin[".".join(path)] = f"environment variable {name}"
    return layer, origin


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the effective config. ``path`` None means the default file if it exists."""
    env = os.environ if environ is None else environ
    explicit = path is not None or bool(env.get("SLURMFLEX_CONFIG"))
    cfg_path = path or Path(env.get("SLURMFLEX_CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(cfg_path), "(file)", f"not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(str(cfg_path), "(file)", f"cannot read: {exc.strerror}") from exc
    elif explicit:
        raise ConfigError(str(cfg_path), "(file)", "config file does not exist")
    env_layer, origin = _env_layer(env)
    merged = _merge(_merge(data, env_layer), overrides or {})
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        source = origin.get(key, str(cfg_path) if cfg_path.exists() else "command line")
        if err["type"] == "extra_forbidden":
            raise ConfigError(source, key, "unknown key", _valid_keys(Config, loc)) from exc
        valid = None
        ctx = err.get("ctx") or {}
        if "expected" in ctx:
            valid = str(ctx["expected"])
        raise ConfigError(source, key, f"{err['msg']} (got {err.get('input')!r})", valid) from exc
