"""The `vault-bridge` command: parses, builds the objects, turns errors into exit codes.

Exit codes: 0 success, 1 operational failure, 2 usage or configuration error
(`plan --detailed-exitcode`: 0 nothing to do, 1 error, 2 changes pending).

Start-up stays short: this module imports click and the error classes only; each command
imports what it uses when it runs (``--help`` loads neither the configuration schema nor an
adapter; ``status`` never loads the agent, the follow-ups or the journal).
"""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from vault_bridge.cli.logs import configure
from vault_bridge.config.limits import MAX_CONCURRENCY
from vault_bridge.errors import ConfigError, LabMissingError, VaultBridgeError

if TYPE_CHECKING:
    from vault_bridge.adapters.vault.client import VaultClient
    from vault_bridge.cli.render import Leaders
    from vault_bridge.config.settings import Settings
    from vault_bridge.rotation.results import PassResult

logger = logging.getLogger(__name__)


@dataclass
class Context:
    config_path: str | None
    verbose: bool
    log_format: str | None
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            from vault_bridge.config.loading import load_config

            self._settings = load_config(self.config_path)
        return self._settings


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from vault_bridge import __version__

    click.echo(f"vault-bridge, version {__version__}")
    ctx.exit()


def _with_concurrency(settings: Settings, concurrency: int | None) -> Settings:
    """``settings`` with ``[agent] concurrency`` replaced by the command line's."""
    if concurrency is None:
        return settings
    import dataclasses

    agent = settings.agent.model_copy(update={"concurrency": concurrency})
    return dataclasses.replace(settings, agent=agent)


concurrency_option = click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=None,
    help="Certificates worked on at once (default: [agent] concurrency). A pass handed over "
    "to a running agent uses the agent's.",
)


class _Group(click.Group):
    """Catches vault_bridge errors once: one line on stderr, a traceback only with -v."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VaultBridgeError as exc:
            obj = ctx.obj
            if isinstance(obj, Context) and obj.verbose:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_path",
    envvar="VAULT_BRIDGE_CONFIG",
    # A plain string: a missing file, a directory or an unreadable one all become the same
    # one-line configuration error (exit 2) in load_config.
    type=str,
    help="Configuration file (TOML). Default: $VAULT_BRIDGE_CONFIG or /etc/vault-bridge/config.toml.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and tracebacks on errors.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log format (default: [agent] log_format, else text).",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool, log_format: str | None) -> None:
    """Certificates from Vault PKI for Redis Enterprise clusters."""
    ctx.obj = Context(config_path, verbose, log_format)
    configure(log_format or "text", verbose)


def _configure_from(ctx: Context, settings: Settings) -> None:
    configure(ctx.log_format or settings.agent.log_format, ctx.verbose)


@cli.command()
@click.option(
    "--once", is_flag=True, help="One reconcile pass, then exit (0 all valid, 1 any failed)."
)
@concurrency_option
@pass_ctx
def run(ctx: Context, once: bool, concurrency: int | None) -> None:
    """Reconcile every cluster: issue and install what is missing, foreign or due."""
    if concurrency is not None and not once:
        raise click.UsageError("--concurrency goes with --once; the agent uses [agent] concurrency")
    settings = _with_concurrency(ctx.settings(), concurrency)
    _configure_from(ctx, settings)
    if not once:
        from vault_bridge.agent.daemon import run_agent

        sys.exit(run_agent(settings, config_path=ctx.config_path))
    from vault_bridge.agent.oneshot import rotate_once

    # Under the state directory's lock; a running agent is handed the pass instead.
    _finish(rotate_once(settings))


def _finish(result: PassResult) -> None:
    from vault_bridge.cli.render import pass_lines

    for line in pass_lines(result):
        click.echo(line)
    for outcome in result.failed:
        click.echo(f"failed {outcome.name} on {outcome.cluster}: {outcome.error}", err=True)
    for cluster, error in result.cluster_errors.items():
        click.echo(f"failed cluster {cluster}: {error}", err=True)
    if not result.ok:
        click.echo(f"error: {result.summary()}", err=True)
        sys.exit(1)
    if not result.outcomes:
        click.echo("nothing to do: every certificate is valid and installed")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--cluster", "cluster_name", help="Only this cluster (default: every cluster).")
@click.option("--all", "all_", is_flag=True, help="Every configured certificate.")
@concurrency_option
@pass_ctx
def issue(
    ctx: Context,
    names: tuple[str, ...],
    cluster_name: str | None,
    all_: bool,
    concurrency: int | None,
) -> None:
    """Re-issue and install NAME... now, whatever their expiry."""
    settings = _with_concurrency(ctx.settings(), concurrency)
    if bool(names) == all_:
        raise ConfigError("give certificate names or --all (not both)")
    clusters = [settings.cluster(cluster_name)] if cluster_name else list(settings.clusters)
    targets: set[tuple[str, str]] = set()
    for cluster in clusters:
        configured = [s.name.value for s in cluster.certificates]
        configured += [d.label for d in cluster.databases]  # bdb:<name>
        for name in names:
            if name not in configured and not cluster_name and len(clusters) > 1:
                continue
            if name not in configured:
                raise ConfigError(
                    f"certificate {name!r} is not configured on cluster {cluster.name!r}; "
                    f"configured: {', '.join(configured) or 'none'}"
                )
            targets.add((cluster.name, name))
        if all_:
            targets.update((cluster.name, n) for n in configured)
    if names and not targets:
        raise ConfigError(f"no cluster has {', '.join(names)} configured")
    _configure_from(ctx, settings)
    from vault_bridge.agent.oneshot import rotate_once

    # Under the state directory's lock; a running agent is handed the request instead.
    _finish(rotate_once(settings, force=targets, only=targets))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects instead of a table.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Every certificate: serial, issuer, not_after, renew_at, state."""
    from vault_bridge.agent.oneshot import with_retry_state
    from vault_bridge.cli.render import status_json, status_table
    from vault_bridge.rotation.app import build

    settings = ctx.settings()
    with build(settings, read_only=True) as app:
        result = app.rotator.status()
        statuses = with_retry_state(settings, result.statuses, app.rotator.clock())
        leaders = _leaders(settings, app.vault) if settings.ha is not None else None
    click.echo(status_json(statuses, leaders) if as_json else status_table(statuses, leaders))
    for cluster, error in result.cluster_errors.items():
        click.echo(f"error: cluster {cluster}: {error}", err=True)
    if result.cluster_errors:
        sys.exit(1)


def _leaders(settings: Settings, vault: VaultClient) -> Leaders:
    """[ha]: each cluster's leader and lease expiry, as recorded in Vault."""
    from vault_bridge.adapters.vault.kv import KvV2
    from vault_bridge.agent.ha import read_leases

    assert settings.ha is not None
    kv = KvV2(vault, settings.ha.kv_mount)
    now = datetime.now(UTC)
    out: dict[str, tuple[str | None, datetime | None]] = {}
    for cluster, lease in read_leases(kv, settings.ha, [c.name for c in settings.clusters]).items():
        live = lease is not None and lease.live(now)
        out[cluster] = (
            lease.holder if live and lease else None,
            lease.expires_at if live and lease else None,
        )
    return out


@cli.command()
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there is nothing to do, 1 on error, 2 when changes are pending.",
)
@pass_ctx
def plan(ctx: Context, detailed_exitcode: bool) -> None:
    """What `run --once` would do, without doing it."""
    from vault_bridge.cli.render import plan_text
    from vault_bridge.rotation.app import build

    settings = ctx.settings()
    with build(settings, read_only=True) as app:
        actions, current = app.rotator.plan()
        now = app.rotator.clock()
    click.echo(plan_text(actions, current.statuses, now))
    for cluster, error in current.cluster_errors.items():
        click.echo(f"error: cluster {cluster}: {error}", err=True)
    if current.cluster_errors:
        sys.exit(1)
    if detailed_exitcode and actions:
        sys.exit(2)


@cli.command()
@click.option(
    "--connect",
    is_flag=True,
    help="Also log in to Vault, read the PKI roles and probe each cluster.",
)
@pass_ctx
def validate(ctx: Context, connect: bool) -> None:
    """Check the configuration (and, with --connect, Vault and the clusters)."""
    settings = ctx.settings()
    specs = settings.specs()
    click.echo(
        f"configuration OK: {len(settings.clusters)} cluster(s), {len(specs)} certificate(s)"
    )
    if not connect:
        return
    from vault_bridge.rotation.access_checks import access_report
    from vault_bridge.rotation.app import build
    from vault_bridge.rotation.connect_checks import connect_checks, issuer_warnings

    with build(settings, read_only=True) as app:
        app.rotator.trust_vault_chains()
        problems = connect_checks(app)
        access = access_report(app)
        warnings = issuer_warnings(app) if not problems else []
    problems.extend(access.problems)
    for note in access.notes:
        click.echo(note)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo("connection checks OK: Vault login, PKI roles, clusters and install permission")


@cli.command()
@pass_ctx
def policy(ctx: Context) -> None:
    """Print the least-privilege Vault policy for this configuration (HCL)."""
    from vault_bridge.decisions.policy import render_policy

    settings = ctx.settings()
    click.echo(render_policy(settings, str(settings.path or "")), nl=False)


@cli.command("vault-setup")
@click.option("--check", is_flag=True, help="Only report what would change.")
@pass_ctx
def vault_setup(ctx: Context, check: bool) -> None:
    """Create or fix the PKI roles the configuration names (needs an admin token)."""
    from vault_bridge.rotation.app import vault_client
    from vault_bridge.rotation.vault_setup import setup_roles

    settings = ctx.settings()
    with vault_client(settings) as vault:
        vault.ensure_token()
        report = setup_roles(vault, settings, apply=not check)
    for line in report.lines:
        click.echo(line)
    if check and report.changes:
        sys.exit(2)


@cli.command("follow-up")
@click.option(
    "--cluster",
    "cluster_names",
    multiple=True,
    help="Only the CRDBs with an instance on this cluster (repeatable; default: every cluster).",
)
@pass_ctx
def follow_up(ctx: Context, cluster_names: tuple[str, ...]) -> None:
    """Run step 2 of the Active-Active follow-up now: `crdb update --force` of every CRDB with
    an instance on the cluster(s), for a certificate installed some other way."""
    from vault_bridge.rotation.followups import FollowUps

    settings = ctx.settings()
    for name in cluster_names:
        settings.cluster(name)  # an unknown name is a usage error (exit 2)
    _configure_from(ctx, settings)
    followups = FollowUps.from_settings(settings)
    try:
        report = followups.run_crdb_updates(list(cluster_names) or None)
    finally:
        followups.close()
    for step in report.steps:
        error = report.errors.get(step.guid)
        state = f"failed: {error}" if error else "updated"
        click.echo(f"{step.guid} {step.name} (through {step.via}): {state}")
    for name, error in report.errors.items():
        if all(step.guid != name for step in report.steps):
            click.echo(f"error: {error}", err=True)
    if not report.steps and not report.errors:
        click.echo("no Active-Active database has an instance on the cluster(s)")
    if report.errors:
        updated = sum(1 for step in report.steps if step.guid not in report.errors)
        click.echo(
            f"error: {len(report.errors)} follow-up(s) failed; {updated} CRDB(s) updated",
            err=True,
        )
        sys.exit(1)


@cli.command()
def demo() -> None:
    """Start OpenBao and a simulated cluster on loopback, rotate everything, show the result.

    The demo comes from the lab distribution (``vault-bridge-lab``, in ``lab/``), found through
    its ``vault_bridge.lab`` entry point; the runtime never imports it.
    """
    from importlib.metadata import entry_points

    found = entry_points(group="vault_bridge.lab", name="demo")
    if not found:
        raise LabMissingError(
            "vault-bridge demo needs the lab: pip install ./lab (or run: python3 dev.py demo)"
        )
    run_demo = next(iter(found)).load()
    logging.getLogger().setLevel(logging.WARNING)  # the demo prints what happens itself
    sys.exit(run_demo(click.echo))


def main() -> None:
    cli(prog_name="vault-bridge")
