"""``python -m chaos``: run the stack as real processes, drive user journeys, kill things, check, report.

One iteration: the journeys of this iteration run their first half (sign up ... chat) while the
accounts of the previous iteration are deleted, and the monkey strikes meanwhile. Then the monkey stops,
every process is brought back, and the checks run until they are clean or the settle timeout passes;
what is left at that point is the iteration's figure. After the last iteration the remaining accounts
are deleted (no monkey) and checked once more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from agentpod.clients.docker_network import sandbox_host_address
from agentpod.security.keyring import Keyring, generate_entry, parse_key
from agentpod.store.engine import create_engine
from chaos.checks import Checker, CheckResult
from chaos.client import ApiClient, Stats
from chaos.journey import Account, Journey
from chaos.monkey import TARGETS, Monkey, MonkeySettings
from chaos.processes import Stack
from tests.fakes.fake_llm import MODEL_ID, FakeLLM

RESULTS_DIR = Path(__file__).parent / "results"
FIGURES = ("lost_messages", "orphans", "stuck_workflows", "leftover_rows")
console = Console(highlight=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random, printed and recorded)")
    p.add_argument("--journeys", type=int, default=2, help="user journeys started per iteration")
    p.add_argument("--prompts", type=int, default=2, help="prompts each journey sends")
    p.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("AGENTPOD_TEST_POSTGRES_URL", ""),
        help="server to create a fresh database on (default: AGENTPOD_TEST_POSTGRES_URL)",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--apis", type=int, default=1)
    p.add_argument("--settle", type=float, default=120.0, help="seconds the checks may take to come clean")
    p.add_argument("--drift-check", type=float, default=3.0, help="AGENTPOD_SANDBOX_DRIFT_CHECK_SECONDS")
    p.add_argument("--reply-timeout", type=float, default=90.0)
    p.add_argument("--deletion-timeout", type=float, default=300.0)
    p.add_argument("--min-gap", type=float, default=4.0, help="shortest pause between two strikes (s)")
    p.add_argument("--max-gap", type=float, default=16.0, help="longest pause between two strikes (s)")
    p.add_argument("--strikes", type=int, default=2, help="most strikes per iteration")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}, or none")
    p.add_argument("--image", default="agentpod-sandbox:dev")
    p.add_argument("--keep", action="store_true", help="keep the run's temporary directory (logs, databases)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR / "latest.json")
    args = p.parse_args(argv)
    unknown = set(args.targets.split(",")) - {*TARGETS, "none", ""}
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.database == "postgres" and not args.postgres_url:
        p.error("--database postgres needs --postgres-url or AGENTPOD_TEST_POSTGRES_URL")
    return args


def agent_config(llm_base_url: str) -> dict[str, Any]:
    """OpenCode config every sandbox's agent starts from: the fake LLM as model and small model."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake LLM",
                "options": {"baseURL": llm_base_url, "apiKey": "sk-fake"},
                "models": {
                    MODEL_ID: {"name": "Fake Model", "tool_call": True, "reasoning": True,
                               "limit": {"context": 128000, "output": 4096}},
                },
            }
        },
        "model": f"fake/{MODEL_ID}",
        "small_model": f"fake/{MODEL_ID}",
        "autoupdate": False,
        "share": "disabled",
    }  # fmt: skip


@dataclass
class Iteration:
    number: int
    seconds: float = 0.0
    settle_seconds: float = 0.0
    strikes: list[dict[str, Any]] = field(default_factory=list)
    journeys: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[dict[str, Any]] = field(default_factory=list)
    check: CheckResult = field(default_factory=CheckResult)

    def as_json(self) -> dict[str, Any]:
        return {
            "iteration": self.number,
            "seconds": round(self.seconds, 1),
            "settle_seconds": round(self.settle_seconds, 1),
            "strikes": self.strikes,
            "journeys": self.journeys,
            "deletions": self.deletions,
            "check": self.check.as_json(),
        }


class Run:
    """One chaos run: its stack, its accounts and what happened."""

    def __init__(self, args: argparse.Namespace) -> None:
        # The installation's keyring: the checks derive each sandbox's OpenCode password from it.
        self.key_entry = generate_entry("chaos1")
        self.keyring = Keyring((parse_key(self.key_entry),))
        self.args = args
        self.seed: int = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
        self.run_id = uuid.uuid4().hex[:6]
        self.root = Path(tempfile.mkdtemp(prefix="agentpod-chaos-"))
        self.stats = Stats()
        self.accounts: list[Account] = []
        self.iterations: list[Iteration] = []
        self.final: Iteration | None = None
        self.pg_admin_url: str | None = None
        self.pg_database: str | None = None
        targets = set(args.targets.split(","))
        self.monkey_settings = MonkeySettings(
            min_gap=args.min_gap,
            max_gap=args.max_gap,
            max_strikes=args.strikes,
            weights={t: (1.0 if t in targets else 0.0) for t in TARGETS},
        )

    # ------------------------------------------------------------------ set-up

    async def database_url(self) -> str:
        if self.args.database == "sqlite":
            return f"sqlite+aiosqlite:///{self.root / 'var' / 'agentpod.db'}"
        base = make_url(self.args.postgres_url)
        self.pg_database = f"agentpod_chaos_{self.run_id}"
        self.pg_admin_url = base.render_as_string(hide_password=False)
        admin = create_async_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{self.pg_database}"'))
        finally:
            await admin.dispose()
        return base.set(database=self.pg_database).render_as_string(hide_password=False)

    async def drop_database(self) -> None:
        if not (self.pg_admin_url and self.pg_database):
            return
        admin = create_async_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)'))
        finally:
            await admin.dispose()

    def environment(self, database_url: str, llm: FakeLLM) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOD_")}
        env.update(
            AGENTPOD_DEV_MODE="0",
            AGENTPOD_DATA_DIR=str(self.root / "var"),
            AGENTPOD_DATABASE_URL=database_url,
            AGENTPOD_TEMPORAL_TASK_QUEUE="chaos",
            AGENTPOD_ENCRYPTION_KEYS=self.key_entry,
            AGENTPOD_SANDBOX_IMAGE=self.args.image,
            AGENTPOD_AGENT_BASE_CONFIG=json.dumps(agent_config(llm.base_url)),
            AGENTPOD_SANDBOX_HOST_SERVICES=json.dumps({"fake-llm": llm.port}),
            AGENTPOD_SANDBOX_DRIFT_CHECK_SECONDS=str(self.args.drift_check),
            AGENTPOD_PUBLIC_DOMAIN="localhost",
        )
        return env

    # ------------------------------------------------------------------ the run

    async def execute(self) -> int:
        args = self.args
        began = time.monotonic()
        docker_client = docker.from_env()
        # Bound to the sandbox network's host address (not reachable from outside the machine), and its port
        # allowlisted in the host firewall: the only host service sandboxes reach.
        llm = FakeLLM.start(host=sandbox_host_address(docker_client))
        (self.root / "var").mkdir(parents=True)
        database_url = await self.database_url()
        stack = Stack(self.root, self.environment(database_url, llm), workers=args.workers, apis=args.apis)
        engine = create_engine(database_url)
        checker: Checker | None = None
        crashed: str | None = None
        console.print(
            f"[bold]chaos[/] seed {self.seed}, {args.iterations} iterations × {args.journeys} journeys, "
            f"{args.database}, {args.workers} worker(s), {args.apis} API(s), run dir {self.root}"
        )
        try:
            await asyncio.to_thread(stack.migrate)
            await stack.start()
            checker = Checker(engine, stack.temporal_address, stack.api_urls, self.keyring)
            pending: list[tuple[Account, ApiClient]] = []
            for number in range(1, args.iterations + 1):
                pending = await self.iteration(number, stack, checker, docker_client, pending)
            self.final = await self.drain(stack, checker, pending)
        except asyncio.CancelledError:  # Ctrl-C / SIGTERM: stop, clean up, still write the report
            crashed = "interrupted"
        except Exception as error:  # the report is still written
            crashed = f"{type(error).__name__}: {error}"
            console.print_exception()
        finally:
            figures_taken = time.monotonic()
            await stack.stop()
            leftovers: list[str] = []
            if checker is not None:
                leftovers = await asyncio.to_thread(checker.remove_ours, self.accounts)
                await checker.close()
            await engine.dispose()
            await self.drop_database()
            llm.stop()
            docker_client.close()
            logs = self.keep_logs()
            if not args.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        duration = figures_taken - began
        report = self.report(stack, duration, crashed, leftovers, logs)
        self.print_summary(report)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(f"report: {args.results}")
        if crashed:
            return 2
        totals = report["totals"]
        return 1 if any(totals[f] for f in FIGURES) or totals["journey_failures"] else 0

    async def iteration(
        self,
        number: int,
        stack: Stack,
        checker: Checker,
        docker_client: docker.DockerClient,
        pending: list[tuple[Account, ApiClient]],
    ) -> list[tuple[Account, ApiClient]]:
        args = self.args
        began = time.monotonic()
        it = Iteration(number)
        accounts = []
        for j in range(1, args.journeys + 1):
            marker = f"cx{self.run_id}-{number}-{j}x"
            accounts.append(Account(label=f"i{number}.j{j}", marker=marker, email=f"{marker}@example.com"))
        self.accounts += accounts
        clients = [ApiClient(stack.api_urls, self.stats) for _ in accounts]
        journeys = [
            Journey(a, c, random.Random(f"{self.seed}:{number}:{a.label}"), prompts=args.prompts,
                    reply_timeout=args.reply_timeout, keyring=self.keyring)
            for a, c in zip(accounts, clients, strict=True)
        ]  # fmt: skip
        deleters = [
            Journey(a, c, random.Random(0), prompts=0, reply_timeout=0).delete(args.deletion_timeout)
            for a, c in pending
        ]
        stop = asyncio.Event()
        monkey = Monkey(
            stack,
            docker_client,
            random.Random(f"{self.seed}:monkey:{number}"),
            self.monkey_settings,
            lambda: checker.our_container_names(self.accounts),
        )
        striking = asyncio.create_task(monkey.run(stop))
        try:
            await asyncio.gather(*(j.live() for j in journeys), *deleters)
        finally:
            stop.set()
            await striking
        await stack.ensure_up()
        it.strikes = monkey.events
        settle_began = time.monotonic()
        it.check = await self.settle(checker, list(zip(accounts, clients, strict=True)), [a for a, _ in pending])
        it.settle_seconds = time.monotonic() - settle_began
        it.journeys = [a.as_json() for a in accounts]
        it.deletions = [a.as_json() for a, _ in pending]
        for _, client in pending:
            await client.aclose()
        it.seconds = time.monotonic() - began
        self.iterations.append(it)
        self.print_iteration(it)
        return list(zip(accounts, clients, strict=True))

    async def drain(self, stack: Stack, checker: Checker, pending: list[tuple[Account, ApiClient]]) -> Iteration:
        """Delete the last iteration's accounts without a monkey, then check once more."""
        began = time.monotonic()
        it = Iteration(0)
        await asyncio.gather(
            *(
                Journey(a, c, random.Random(0), prompts=0, reply_timeout=0).delete(self.args.deletion_timeout)
                for a, c in pending
            )
        )
        await stack.ensure_up()
        settle_began = time.monotonic()
        it.check = await self.settle(checker, [], [a for a, _ in pending])
        it.settle_seconds = time.monotonic() - settle_began
        it.deletions = [a.as_json() for a, _ in pending]
        for _, client in pending:
            await client.aclose()
        it.seconds = time.monotonic() - began
        self.print_iteration(it)
        return it

    async def settle(
        self, checker: Checker, live: list[tuple[Account, ApiClient]], deleted: list[Account]
    ) -> CheckResult:
        """Run the checks until clean or ``--settle`` seconds have passed; the last result counts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.settle
        while True:
            try:
                result = await checker.run(live, deleted, self.accounts)
            except Exception as error:  # a check that cannot run is itself a finding if it persists
                checker._temporal = None
                result = CheckResult(unverifiable_sandboxes=1)
                result.note("check_errors", f"{type(error).__name__}: {error}")
            if result.clean or loop.time() > deadline:
                return result
            await asyncio.sleep(2.0)

    # ------------------------------------------------------------------ output

    def keep_logs(self) -> str | None:
        """Copy the processes' logs next to the report (not committed)."""
        source = self.root / "logs"
        if not source.exists():
            return None
        target = self.args.results.parent / "logs"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return str(target)

    def report(
        self, stack: Stack, duration: float, crashed: str | None, leftovers: list[str], logs: str | None
    ) -> dict[str, Any]:
        rounds = [*self.iterations, *([self.final] if self.final else [])]
        totals: dict[str, Any] = {f: sum(getattr(r.check, f) for r in rounds) for f in CheckResult().counts()}
        strikes = Counter(s["target"] for r in rounds for s in r.strikes if "skipped" not in s["detail"])
        failures = [f"{a.label}: {f}" for a in self.accounts for f in a.failures]
        replies: Counter[str] = Counter()
        for a in self.accounts:
            replies.update(a.replies)
        totals.update(
            iterations=len(self.iterations),
            journeys=len(self.accounts),
            journeys_completed=sum(1 for a in self.accounts if "delete" in a.steps_done and not a.failures),
            journey_failures=len(failures),
            strikes=dict(strikes),
            replies=dict(replies),
            user_restarts=sum(a.user_restarts for a in self.accounts),
            unexpected_exits={p.name: p.unexpected_exits for p in stack.all if p.unexpected_exits},
        )
        return {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seed": self.seed,
            "duration_seconds": round(duration, 1),
            "crashed": crashed,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
            "totals": totals,
            "failures": failures,
            "http": self.stats.as_json(),
            "processes": {p.name: {"starts": p.starts, "kills": p.kills} for p in stack.all},
            "removed_at_end": leftovers,
            "logs": logs,
            "iterations": [r.as_json() for r in self.iterations],
            "final": self.final.as_json() if self.final else None,
        }

    def print_iteration(self, it: Iteration) -> None:
        c = it.check
        label = f"iteration {it.number}" if it.number else "final drain"
        strikes = Counter(s["target"] for s in it.strikes if "skipped" not in s["detail"])
        failures = sum(len(j["failures"]) for j in it.journeys) + sum(
            1 for j in it.deletions for f in j["failures"] if f.startswith("delete")
        )
        style = "green" if not any(c.counts()[f] for f in FIGURES) else "red"
        console.print(
            f"[{style}]{label}[/]: {it.seconds:.0f} s (settle {it.settle_seconds:.0f} s) · strikes "
            f"{dict(strikes) or '-'} · lost {c.lost_messages} · orphans {c.orphans} · stuck {c.stuck_workflows} "
            f"· leftovers {c.leftover_rows} · journey failures {failures}"
        )
        for key, lines in c.details.items():
            for line in lines[:5]:
                console.print(f"    {key}: {line}", markup=False)
        for j in it.journeys:
            for failure in j["failures"]:
                console.print(f"    failure {j['label']}: {failure}", markup=False)
        for j in it.deletions:  # their earlier failures were printed with their own iteration
            for failure in (f for f in j["failures"] if f.startswith("delete")):
                console.print(f"    failure {j['label']}: {failure}", markup=False)

    def print_summary(self, report: dict[str, Any]) -> None:
        totals = report["totals"]
        table = Table(title=f"Chaos run (seed {report['seed']}, {report['duration_seconds']:.0f} s)")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("target")
        for figure in FIGURES:
            value = totals[figure]
            table.add_row(figure.replace("_", " "), f"[{'green' if value == 0 else 'red'}]{value}[/]", "0")
        for key in ("iterations", "journeys", "journeys_completed", "journey_failures", "user_restarts"):
            table.add_row(key.replace("_", " "), str(totals[key]), "")
        for key in ("unverifiable_sandboxes", "stale_messages", "agent_dropped", "failed_workflows",
                    "marker_in_activity"):  # fmt: skip
            table.add_row(key.replace("_", " "), str(totals[key]), "info")
        table.add_row("strikes", ", ".join(f"{k} {v}" for k, v in sorted(totals["strikes"].items())) or "-", "")
        table.add_row("replies", ", ".join(f"{k} {v}" for k, v in sorted(totals["replies"].items())) or "-", "")
        http = report["http"]
        table.add_row("HTTP requests / retries", f"{http['requests']} / {sum(http['retries'].values())}", "")
        table.add_row("HTTP 500 answers", str(len(http["server_errors"])), "0")
        exits = totals["unexpected_exits"]
        table.add_row("unexpected process exits", str(sum(len(v) for v in exits.values())), "0")
        console.print(table)
        if report["crashed"]:
            console.print(f"[red]the run crashed: {report['crashed']}[/]")


async def _main(args: argparse.Namespace) -> int:
    # Ctrl-C or SIGTERM cancels the run; execute() then stops the stack and removes its containers.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    return await Run(args).execute()


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(parse_args(argv)))
