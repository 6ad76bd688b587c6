"""The five scenarios of issue 4, the cluster scenario of issue 12 (bench/cluster.py),
the soak of issue 19, and the plan that sizes them
(full run or ``--quick``).

``Runner.run`` walks the plan peer by peer: each scenario gets a freshly started
server (the soak: one per step, catsock only; bench/soak.py), each step prints one
progress line to stderr, and every step — failed ones included, with their error —
becomes one record in ``Runner.records``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import cluster, httpprobe, loadgen, soak
from .report import loss_text
from .servers import PEERS, CatsockTokens, Server, ServerFailed, soak_token_name
from .soakreport import soak_summary
from .wsclient import ConnectFailed

__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS", "Plan", "Runner"]

SCENARIOS = ("throughput", "latency", "storm", "memory", "durability", "cluster", "soak")
#: What runs without ``--scenarios``: all but the cluster scenario (it needs
#: redis-server) and the soak (10 minutes a load level).
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s not in ("cluster", "soak"))

#: What the durability scenario compares, as catsock settings: "full" is the
#: default (event log, and message log with payloads); "off" keeps the event log
#: but no message rows; "live" keeps neither (no seq, replay, dedup: a relay).
#: Scenarios that measure catsock alone.
CATSOCK_ONLY = ("durability", "cluster", "soak")

DURABILITY_MODES: dict[str, dict[str, str]] = {
    "full": {"CATSOCK_LOG__POLICY": "full"},
    "off": {"CATSOCK_LOG__POLICY": "off"},
    "live": {"CATSOCK_LOG__POLICY": "off", "CATSOCK_DELIVERY__LOG": "false"},
}


@dataclass
class Plan:
    peers: list[str]
    scenarios: list[str]
    quick: bool = False
    publishers: int = 4
    throughput_subscribers: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])
    throughput_duration: float = 5.0
    latency_rates: list[int] = field(default_factory=lambda: [1000, 5000, 10000])
    latency_subscribers: int = 4
    latency_publishers: int = 1
    latency_duration: float = 5.0
    storm_sizes: list[int] = field(default_factory=lambda: [1000, 10000])
    storm_wave: int = 100
    storm_timeout: float = 60.0
    memory_levels: list[int] = field(default_factory=lambda: [0, 1000, 10000])
    durability_subscribers: list[int] = field(default_factory=lambda: [1, 100])
    cluster_subscribers: list[int] = field(default_factory=lambda: [10, 100])
    step_timeout: float = 300.0
    soak: soak.SoakPlan = field(default_factory=soak.SoakPlan)
    server_cpu: int | None = 0
    generator_cpu: int | None = 1

    @classmethod
    def make(cls, *, quick: bool, peers: list[str], scenarios: list[str]) -> Plan:
        if not quick:
            return cls(peers=peers, scenarios=scenarios)
        return cls(
            peers=peers,
            scenarios=scenarios,
            quick=True,
            publishers=2,
            throughput_subscribers=[1, 10],
            throughput_duration=1.0,
            latency_rates=[1000],
            latency_subscribers=5,
            latency_duration=1.5,
            storm_sizes=[200],
            storm_timeout=20.0,
            memory_levels=[0, 200],
            durability_subscribers=[10],
            cluster_subscribers=[10],
            step_timeout=60.0,
            soak=soak.SoakPlan.quick(),
        )

    def steps(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every (scenario, peer, params) in the order they run."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        for scenario in self.scenarios:
            peers = ["catsock"] if scenario in CATSOCK_ONLY else self.peers
            for peer in peers:
                out.extend((scenario, peer, p) for p in self._params(scenario))
        return out

    def _params(self, scenario: str) -> list[dict[str, Any]]:
        if scenario == "throughput":
            return [
                {"publishers": self.publishers, "subscribers": s}
                for s in self.throughput_subscribers
            ]
        if scenario == "latency":
            return [
                {
                    "publishers": self.latency_publishers,
                    "subscribers": self.latency_subscribers,
                    "rate": r,
                }
                for r in self.latency_rates
            ]
        if scenario == "storm":
            return [
                {"clients": n, "wave": w} for n in self.storm_sizes for w in (None, self.storm_wave)
            ]
        if scenario == "memory":
            return [{"levels": self.memory_levels}]
        if scenario == "durability":
            return [
                {"log_policy": policy, "publishers": self.publishers, "subscribers": s}
                for policy in DURABILITY_MODES
                for s in self.durability_subscribers
            ]
        if scenario == "cluster":
            return [
                {"mode": mode, "publishers": self.publishers, "subscribers": s}
                for mode in cluster.MODES
                for s in self.cluster_subscribers
            ]
        if scenario == "soak":
            capacity: list[dict[str, Any]] = [] if self.soak.capacity else [{"phase": "capacity"}]
            return capacity + [{"load": load} for load in self.soak.loads]
        raise ValueError(f"unknown scenario {scenario!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        if key == "levels":
            parts.append("idle " + "/".join(f"{v:,}" for v in value))
        elif key == "wave":
            parts.append("all at once" if value is None else f"waves of {value}")
        elif key == "log_policy":
            parts.append(f"log={value}")
        elif key == "load":
            parts.append(f"{value:g}× capacity")
        elif key == "phase":
            parts.append(str(value))
        else:
            short = {"publishers": "P", "subscribers": "S", "clients": "N", "rate": "msg/s"}
            parts.append(
                f"{short.get(key, key)}={value:,}" if isinstance(value, int) else str(value)
            )
    return " ".join(parts)


def _summary(scenario: str, m: dict[str, Any]) -> str:
    cpu = f"srv {m.get('server_cpu_pct', 0):.0f}% gen {m.get('generator_cpu_pct', 0):.0f}%"
    if m.get("cpu_pressure_pct") is not None:
        cpu += f" cpu-wait {m['cpu_pressure_pct']:.0f}%"
    if scenario in ("throughput", "durability", "cluster"):
        loss = "lossless" if m["lossless"] else f"NOT LOSSLESS ({loss_text(m)})"
        rates = f"{m['msgs_per_s']:,.0f} msg/s, {m['deliveries_per_s']:,.0f} deliveries/s"
        return f"{rates}, {loss}, {cpu}"
    if scenario == "latency":
        loss = "lossless" if m["lossless"] else f"NOT LOSSLESS ({loss_text(m)})"
        p50, p99 = m.get("p50_ms"), m.get("p99_ms")
        lat = "no samples" if p50 is None else f"p50 {p50:.1f} ms p99 {p99:.1f} ms"
        unsent = f" ({m['unsent']:,} unsent)" if m["unsent"] else ""
        return f"{lat}, {m['achieved_msgs_per_s']:,.0f} msg/s sent{unsent}, {loss}, {cpu}"
    if scenario == "storm":
        return (
            f"{m['ok']:,} ok {m['failed']:,} failed, p50 {m['setup_p50_ms']:.0f} ms "
            f"p99 {m['setup_p99_ms']:.0f} ms, {m['connections_per_s']:,.0f} conn/s, {cpu}"
        )
    if scenario == "soak":
        return soak_summary(m)
    if scenario == "memory":
        levels = m["levels"]
        last = levels[-1]
        per = last.get("kib_per_conn")
        per_text = f", {per:.1f} KiB/conn" if per is not None else ""
        return f"RSS {levels[0]['rss_kib'] / 1024:.1f} → {last['rss_kib'] / 1024:.1f} MiB{per_text}"
    return ""


class Runner:
    def __init__(self, plan: Plan, run_dir: Path, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.run_dir = run_dir
        self.log = log
        self.records: list[dict[str, Any]] = []
        self._tokens: CatsockTokens | None = None
        self._steps = plan.steps()
        self._done = 0
        self.skipped: dict[str, str] = {}
        #: The cluster scenario's redis-server while a mode that uses it runs.
        self._redis: cluster.BenchRedis | None = None

    async def run(self) -> list[dict[str, Any]]:
        # The token database lives outside the results: it holds real (if throwaway) tokens.
        with tempfile.TemporaryDirectory(prefix="catsock-bench-tokens-") as tokens_dir:
            more = None
            if "soak" in self.plan.scenarios:
                more = {"AFAD": self.plan.soak.afad, "DASHBOARD": 1}
            if "catsock" in self.plan.peers or set(CATSOCK_ONLY) & set(self.plan.scenarios):
                self._tokens = await trio.to_thread.run_sync(
                    CatsockTokens.create, Path(tokens_dir), more
                )
            await self._run_all()
        return self.records

    async def _run_all(self) -> None:
        for scenario in self.plan.scenarios:
            if scenario == "soak":
                await self._soak()
                continue
            if scenario == "cluster":
                await self._cluster()
                continue
            peers = ["catsock"] if scenario == "durability" else self.plan.peers
            for peer in peers:
                params = [p for s, q, p in self._steps if s == scenario and q == peer]
                if scenario == "durability":
                    for policy, env in DURABILITY_MODES.items():
                        mine = [p for p in params if p["log_policy"] == policy]
                        await self._scenario(scenario, peer, mine, {**env, "MODE": policy})
                else:
                    await self._scenario(scenario, peer, params, {})

    async def _cluster(self) -> None:
        steps = [p for s, _, p in self._steps if s == "cluster"]
        problem = cluster.missing()
        if problem is not None:
            for params in steps:
                self._record("cluster", "catsock", params, None, problem, 0.0)
            return
        logs = self.run_dir / "logs"
        async with cluster.BenchRedis.running(logs, self.plan.generator_cpu) as redis:
            for mode in cluster.MODES:
                env, args, pinned = cluster.server_setup(mode, redis.url)
                self._redis = None if mode == "embedded" else redis
                await redis.flush()
                mine = [p for p in steps if p["mode"] == mode]
                await self._scenario(
                    "cluster", "catsock", mine, {**env, "MODE": mode}, args, pinned=pinned
                )
        self._redis = None

    async def _scenario(
        self,
        scenario: str,
        peer: str,
        steps: list[dict[str, Any]],
        env: dict[str, str],
        args: list[str] | None = None,
        *,
        pinned: bool = True,
    ) -> None:
        spec = PEERS[peer]
        env = dict(env)
        tag = f"{peer}-{scenario}" + (f"-{env.pop('MODE')}" if "MODE" in env else "")
        server: Server | None = None
        try:
            server = await Server.start(
                spec,
                log_dir=self.run_dir / "logs",
                tag=tag,
                cpu=self.plan.server_cpu if pinned else None,
                tokens=self._tokens,
                env=env,
                args=args,
            )
            target = loadgen.Target(server.port, spec.sio, server.cats_token, server.afad_token)
            await loadgen.preflight(target)
        except Exception as exc:
            for params in steps:
                self._record(scenario, peer, params, None, f"server: {_explain(exc)}", 0.0)
            if server is not None:
                await server.stop()
            return
        try:
            for params in steps:
                started = time.perf_counter()
                error = None
                metrics: dict[str, Any] | None = None
                if not server.alive():
                    error = f"server died: {server.log_tail()}"
                else:
                    try:
                        with trio.fail_after(self.plan.step_timeout):
                            metrics = await self._step(scenario, server, target, params)
                    except Exception as exc:  # one failed step must not end the run
                        error = _explain(exc)
                    if not server.alive():
                        error = (error or "") + f" server died: {server.log_tail()}"
                self._record(scenario, peer, params, metrics, error, time.perf_counter() - started)
        finally:
            await server.stop()

    async def _step(
        self, scenario: str, server: Server, target: loadgen.Target, params: dict[str, Any]
    ) -> dict[str, Any]:
        plan = self.plan
        if scenario in ("throughput", "durability", "cluster"):
            return await cluster.measured(
                self._redis,
                lambda: loadgen.run_closed_loop(
                    target,
                    publishers=params["publishers"],
                    subscribers=params["subscribers"],
                    duration=plan.throughput_duration,
                    server_cpu=server.cpu_seconds,
                ),
            )
        if scenario == "latency":
            return await loadgen.run_open_loop(
                target,
                publishers=params["publishers"],
                subscribers=params["subscribers"],
                rate=params["rate"],
                duration=plan.latency_duration,
                server_cpu=server.cpu_seconds,
            )
        if scenario == "storm":

            async def rss() -> dict[str, Any]:
                return {"server_rss_kib": server.rss_kib()}

            # The previous step's clients were just cut: its thousands of closes
            # must not be timed as this step's connects (every peer alike).
            await _settled_cpu(server)
            return await loadgen.storm(
                target,
                clients=params["clients"],
                wave=params["wave"],
                per_client_limit=plan.storm_timeout,
                server_cpu=server.cpu_seconds,
                after=rss,
            )
        if scenario == "memory":
            return await _memory(target, server, params["levels"], quick=plan.quick)
        raise ValueError(scenario)

    # -- the soak (bench/soak.py) ------------------------------------------------------

    async def _soak(self) -> None:
        """The capacity step (unless given), then one step per load level, each on a
        fresh catsock with fresh clients."""
        plan = self.plan.soak
        assert self._tokens is not None
        tokens = soak.SoakTokens(
            self._tokens.cats, self._tokens.more["AFAD"], self._tokens.more["DASHBOARD"][0]
        )
        capacity = plan.capacity
        if capacity is None:
            metrics = await self._soak_step(
                tokens, {"phase": "capacity"}, "capacity", 900 if not self.plan.quick else 60
            )
            if metrics is not None:
                capacity = metrics["capacity_events_per_s"]
        for load in plan.loads:
            params = {"load": load}
            if not capacity:
                self._record("soak", "catsock", params, None, "no capacity was measured", 0.0)
                continue
            await self._soak_step(
                tokens,
                params,
                f"{load:g}x",
                plan.duration + plan.drain_limit + 180,
                rate=load * capacity,
                capacity=capacity,
            )

    async def _soak_step(
        self,
        tokens: soak.SoakTokens,
        params: dict[str, Any],
        label: str,
        limit: float,
        *,
        rate: float = 0.0,
        capacity: float = 0.0,
    ) -> dict[str, Any] | None:
        plan = self.plan.soak
        started = time.perf_counter()
        metrics: dict[str, Any] | None = None
        error: str | None = None
        server: Server | None = None
        try:
            server = await Server.start(
                PEERS["catsock"],
                log_dir=self.run_dir / "logs",
                tag=f"catsock-soak-{label}",
                cpu=self.plan.server_cpu,
                tokens=self._tokens,
                limits=soak.soak_env(plan.dashboards),
            )
            with trio.fail_after(limit):
                metrics = await self._soak_measure(server, tokens, params, label, rate)
            if "load" in params:
                metrics["load"] = params["load"]
                metrics["capacity_events_per_s"] = capacity
        except Exception as exc:  # one failed step must not end the run
            error = _explain(exc)
        finally:
            if server is not None:
                died = not server.alive()
                await server.stop(keep_workdir=True)
                if died:
                    error = (error or "") + f" server died: {server.log_tail()}"
                elif metrics is not None and "load" in params and server.database is not None:
                    names = [soak_token_name("AFAD", i) for i in range(plan.afad)]
                    try:
                        metrics["database"] = soak.inspect_database(server.database, names)
                    except Exception as exc:
                        metrics["database"] = {"error": _explain(exc)}
                server.cleanup()
                if metrics is not None:
                    metrics["server_log"] = soak.log_problems(server.log_path)
        self._record("soak", "catsock", params, metrics, error, time.perf_counter() - started)
        return metrics if error is None else None

    async def _soak_measure(
        self,
        server: Server,
        tokens: soak.SoakTokens,
        params: dict[str, Any],
        label: str,
        rate: float,
    ) -> dict[str, Any]:
        plan = self.plan.soak
        target = loadgen.Target(server.port, False, server.cats_token, server.afad_token)
        await loadgen.preflight(target)
        async with trio.open_nursery() as nursery:
            crowd = await soak.Crowd.connect(server.port, tokens, plan, nursery)
            try:
                if "phase" in params:
                    result = await soak.measure_capacity(crowd, plan, server.cpu_seconds)
                else:
                    result = await soak.run_level(
                        crowd,
                        plan,
                        rate=rate,
                        port=server.port,
                        server_cpu=server.cpu_seconds,
                        server_rss=server.rss_kib,
                        log=self.log,
                        label=label,
                    )
                    result["final_metrics"] = {}
                    for _ in range(3):  # after the drain; a busy gateway may still be slow
                        final = await httpprobe.get(server.port, "/metrics", plan.probe_limit)
                        if final.ok:
                            result["final_metrics"] = httpprobe.parse_metrics(final.body)
                            break
            finally:
                crowd.close()
                nursery.cancel_scope.cancel()
        result["plan"] = soak.plan_dict(plan)
        return result

    def _record(
        self,
        scenario: str,
        peer: str,
        params: dict[str, Any],
        metrics: dict[str, Any] | None,
        error: str | None,
        seconds: float,
    ) -> None:
        self._done += 1
        record = {
            "scenario": scenario,
            "peer": peer,
            "params": params,
            "metrics": metrics,
            "error": error,
            "seconds": seconds,
        }
        self.records.append(record)
        if error is not None:
            outcome = f"ERROR: {error}"
        else:
            assert metrics is not None
            outcome = _summary(scenario, metrics)
        width = len(str(len(self._steps)))
        self.log(
            f"bench [{self._done:>{width}}/{len(self._steps)}] {peer:<12} {scenario:<10} "
            f"{_describe(params):<28} {outcome} ({seconds:.1f} s)"
        )


def _explain(exc: BaseException) -> str:
    """One line for an error, unwrapping trio's exception groups to their first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, trio.TooSlowError):
        return "step timed out"
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, (ConnectFailed, ServerFailed, OSError)):
        text = f"{type(exc).__name__}: {text}"
    return text


#: A server is idle when it used under this share of a core over ``IDLE_WINDOW`` s.
IDLE_SHARE = 0.05
IDLE_WINDOW = 0.2


async def _settled_cpu(server: Server, within: float = 10.0) -> None:
    """Return once the server is idle (or after ``within`` seconds)."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        before = server.cpu_seconds()
        await trio.sleep(IDLE_WINDOW)
        if server.cpu_seconds() - before < IDLE_SHARE * IDLE_WINDOW:
            return


async def _settled_rss(server: Server, quick: bool) -> int:
    """RSS once two samples 0.25 s apart differ by under 0.5 % (at most 2 s / 5 s)."""
    deadline = time.perf_counter() + (2.0 if quick else 5.0)
    previous = server.rss_kib()
    while time.perf_counter() < deadline:
        await trio.sleep(0.25)
        current = server.rss_kib()
        if abs(current - previous) <= 0.005 * max(previous, 1):
            return current
        previous = current
    return previous


async def _memory(
    target: loadgen.Target, server: Server, levels: list[int], *, quick: bool
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        conns: list[Any] = []
        try:
            for level in sorted(levels):
                need = level - len(conns)
                if need > 0:
                    conns += await loadgen.connect_many(target, need, "AFAD", nursery)
                rss = await _settled_rss(server, quick)
                row: dict[str, Any] = {"connections": level, "rss_kib": rss}
                if rows and level > rows[0]["connections"]:
                    base = rows[0]
                    row["kib_per_conn"] = (rss - base["rss_kib"]) / (level - base["connections"])
                rows.append(row)
        finally:
            for conn in conns:
                conn.abort()
    return {"levels": rows}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
