# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's service: ``twistd -n twistproxy --port 8080``.

:func:`makeService` is the one place in twistproxy that imports the global
reactor; everything it builds takes the reactor as an argument.  The
options it is given are :class:`twistproxy.options.Options` (imported here
for twistd's ``ServiceMaker``, which looks for them in this module).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger, globalLogPublisher

from twistproxy._drain import LAST_WORD
from twistproxy._health import Health, RunningService, status_site
from twistproxy._twisted_compat import dispatch_directly
from twistproxy.addons.certpage import CertPage
from twistproxy.addons.flowlog import FlowLog
from twistproxy.addons.reverse import ReverseRewrite
from twistproxy.addons.save import SaveFlows
from twistproxy.addons.script import AddonFileWatcher
from twistproxy.certs import CA_CERT_PEM, CA_FILE, CertificateAuthority, CertificateStore
from twistproxy.errors import CertificateAuthorityError
from twistproxy.limits import with_backlog
from twistproxy.metrics import Metrics, use_directory
from twistproxy.options import Options
from twistproxy.proxy import ProxyFactory
from twistproxy.proxyprotocol import ProxyHeaderEndpoint, ProxyHeaderFactory, split_prefix
from twistproxy.replay import ClientReplay, ClientReplayService, ServerReplay
from twistproxy.service import ProxyService
from twistproxy.supervisor_tap import MainService, supervisor_service
from twistproxy.supervisor_tap import Options as SupervisorOptions
from twistproxy.web.service import WebUI
from twistproxy.workers import (
    INTERFACE_POSITION,
    SupervisorWatch,
    WorkerPortService,
    endpoint_argument,
    exec_supervisor,
    split_endpoint,
    worker_arguments,
)

_log = Logger(namespace="twistproxy")


def makeService(options: Options) -> IService:
    """
    ``IServiceMaker.makeService``: the only place that touches the global
    reactor.  With ``--workers`` above 1, once the options are checked and
    the CA is made, twistd's process becomes the supervisor
    (:func:`~twistproxy.workers.exec_supervisor`): a process that has not
    loaded the proxy.
    """
    if _supervising(options):
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        try:
            arguments = supervisor_arguments(options)
        finally:
            globalLogPublisher.removeObserver(observer)
        exec_supervisor(options.raw_args, arguments, events)  # returns only outside twistd
        from twisted.internet import reactor

        return supervisor_service(_supervisor_options(arguments), reactor)
    from twisted.internet import reactor

    dispatch_directly(reactor)  # twistd's process is the proxy's own
    return make_service(options, reactor)


def make_service(options: Options, reactor: Any) -> MultiService:
    """
    Build the proxy service for parsed *options* on *reactor*: the proxy,
    or with ``--workers`` above 1 the supervisor of that many proxies.
    """
    if _supervising(options):
        return supervisor_service(_supervisor_options(supervisor_arguments(options)), reactor)
    store = None if options["no-intercept"] else _certificate_store(options)
    # Access control first, so nothing else runs for a refused request; the
    # CA page is behind the authentication but not subject to the host policy
    # (it is the proxy's own page, never a destination).
    auth = options["proxy-auth-addon"]
    addons: list[object] = [] if auth is None else [auth]
    if store is not None:
        addons.append(CertPage(store.authority))
    if options["host-policy"] is not None:
        addons.append(options["host-policy"])
    for _, endpoint in options["listeners"]:
        if auth is None and not loopback_only(endpoint):
            _log.warn(
                "twistproxy listens on {endpoint} without --proxy-auth: anyone who can "
                "reach this port can use the proxy, and reach whatever it can reach. "
                "Require a password with --proxy-auth USER:PASS (or --proxy-auth-file "
                "FILE), or listen on loopback only (--port tcp:PORT:interface=127.0.0.1).",
                endpoint=endpoint,
            )
    if not options["quiet"]:
        addons.append(FlowLog())
    # The built-in rewrites, before the addon files: these see the flows
    # rewritten and have the last word.
    addons.extend(options.rewrite_addons())
    if options["reverse-rewrite"]:
        addons.append(ReverseRewrite())
    # The addon files' addons (loaded, given --set, configured) are in the
    # manager: the built-in ones go around them.
    manager = options["addon-manager"]
    manager.add(*addons, at=0)
    addons = []
    metrics, registry = _metrics(options)
    # After the addon files, so it sees their last word (flow.passthrough).
    if options["server-replay"]:
        addons.append(ServerReplay(
            options["server-replay-flows"],
            ignore_params=options["replay-ignore-param"],
            ignore_content=options["replay-ignore-content"],
            match_headers=options["replay-match-header"],
            unmatched=options["replay-unmatched"],
            now=reactor.seconds,
        ))
    saving = None
    if options["save"] is not None:
        try:
            # Unbuffered appends: one write per flow, never interleaved with
            # another worker's. Closed when the service stops.
            saving = SaveFlows.open(Path(options["save"]).expanduser(),
                                    flow_filter=options["save-filter-parsed"])
        except OSError as e:
            raise SystemExit(f"twistproxy: --save {options['save']}: {e.strerror}") from e
        addons.append(saving)
    web = WebUI.from_options(options, reactor)
    if web is not None:
        addons.extend(web.addons)
    if metrics is not None:
        addons.append(metrics)  # last: it counts what the others made of the flow
    manager.add(*addons)
    factories = [
        ProxyFactory(
            reactor=reactor,
            addons=manager,
            body_limit=options["body-limit"],
            timeout=options["timeout"],
            connect_timeout=options["connect-timeout"],
            cert_store=store,
            ignore_hosts=options["ignore-hosts"],
            upstream_tls=options["upstream-tls"],
            limits=options["limits"],
            hook_timeout=options["hook-timeout"],
            intercept_timeout=options["intercept-timeout"],
            connection_strategy=options["connection-strategy"],
            mode=mode,
            keep_host_header=options["keep-host-header"],
            upstream_auth=options["upstream-auth"] if mode.kind == "upstream" else None,
            certificates=options["certs"],
        )
        for mode, _ in options["listeners"]
    ]
    top = MainService(", ".join(endpoint for _, endpoint in options["listeners"]))
    if options["addon-files"]:
        AddonFileWatcher(reactor, manager, options["addon-files"]).setServiceParent(top)
    listening: list[Callable[[], Deferred[Any]]] = []
    headers: list[list[ProxyHeaderFactory]] = []  # the PROXY listeners', for their refusals
    outer = _running(options, reactor, listening, registry, metrics)
    parent: MultiService = top if outer is None else outer
    if outer is not None:
        outer.setServiceParent(top)
    # What makes flows runs under the closing of what records them (the
    # save file, the web UI's store): they close once the proxy's services
    # all stopped, the connections drained (their flows saved, stored).
    closers = [c.close for c in (saving, web) if c is not None]
    serving: MultiService = _Closing(*closers) if closers else parent
    if serving is not parent:
        serving.setServiceParent(parent)
    timeout = options["shutdown-timeout"]
    if options["worker"]:
        inner, proxied = split_prefix(options["endpoint"])
        listen = with_backlog(inner, options["backlog"])
        wrap = None
        if proxied:
            made: list[ProxyHeaderFactory] = []
            headers.append(made)

            def wrap(factory: ProxyFactory) -> ProxyHeaderFactory:
                made.append(ProxyHeaderFactory(factory, clock=reactor))
                return made[-1]

        port = WorkerPortService(reactor, listen, factories[0], shutdown_timeout=timeout,
                                 wrap=wrap)
        port.setServiceParent(serving)
        SupervisorWatch(reactor).setServiceParent(top)
        if metrics is not None:
            # Which worker took how many: the supervisor's /metrics shows the split.
            metrics.count("worker_connections", "Client connections each worker accepted.",
                          lambda: port.accepted, labels={"worker": str(options["worker-number"])})
    else:
        for factory, (_, endpoint) in zip(factories, options["listeners"], strict=True):
            service = ProxyService(endpoint, factory, backlog=options["backlog"],
                                   shutdown_timeout=timeout)
            service.setServiceParent(serving)
            listening.append(service.when_listening)
            if isinstance(service.endpoint, ProxyHeaderEndpoint):
                headers.append(service.endpoint.factories)
    if metrics is not None:
        refused = (lambda: sum(f.refused for made in headers for f in made)) if headers else None
        metrics.watch(factories, store, refused=refused)
    # Replayed requests go out as the first listener's (as a regular proxy's
    # unless that is another mode).
    factory = factories[0]
    if web is not None:
        web.replay = ClientReplay(factory)
        web.service(closes_store=False).setServiceParent(top)  # closed by serving
    if options["client-replay"]:
        ClientReplayService(
            ClientReplay(factory, concurrency=options["replay-concurrency"]),
            options["client-replay-flows"],
            reactor=reactor,
            stop=reactor.stop if options["exit-after-replay"] else None,
        ).setServiceParent(serving)
    return top


def loopback_only(description: str) -> bool:
    """
    Whether the server endpoint *description* (``tcp:8080:interface=...``)
    can be reached only from this machine: a TCP or SSL endpoint on a
    loopback interface (``127.x.y.z``, ``::1``, ``localhost``), or a UNIX
    socket.  A missing interface means every interface; an endpoint type
    whose interface cannot be told (``systemd:``, plugins) counts as
    reachable.
    """
    args, kwargs = split_endpoint(split_prefix(description)[0])
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return True
    if kind not in INTERFACE_POSITION:
        return False
    interface = endpoint_argument(args, kwargs, "interface", "::" if kind == "tcp6" else "")
    if interface.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _supervising(options: Options) -> bool:
    """Whether *options* make the supervisor of ``--workers`` proxies."""
    return bool(options["workers"] > 1 and not options["worker"])


def supervisor_arguments(options: Options) -> list[str]:
    """
    The ``twistd twistproxy-supervisor`` options
    (:class:`twistproxy.supervisor_tap.Options`) of the supervisor of
    ``--workers`` proxies run with the checked *options*.  The CA is made
    (or checked) here, once, and the workers are handed it with ``--ca``.

    :raises SystemExit: with one line, when the CA cannot be loaded or made.
    """
    worker_args = worker_arguments(options.raw_args)
    endpoint, proxied = split_prefix(options["endpoint"])
    if proxied and "--proxy-protocol" not in worker_args:
        worker_args.append("--proxy-protocol")
    if not options["no-intercept"]:
        _certificate_store(options)
        ca = options["ca"] or str(Path(options["ca-dir"]).expanduser() / CA_FILE)
        worker_args += ["--ca", ca]
    arguments = [
        "--workers", str(options["workers"]), "--endpoint", endpoint,
        "--restart-limit", str(options["restart-limit"]),
        # The workers drain first: their deadline, the drain's last words
        # (twice LAST_WORD), and a margin for starting to.
        "--kill-after", repr(options["shutdown-timeout"] + 2 * LAST_WORD + 3.0),
        "--drain-delay", repr(options["drain-delay"]),
    ]
    if options["metrics-endpoint"] is not None:
        arguments += ["--metrics-endpoint", options["metrics-endpoint"]]
    return [*arguments, "--", *worker_args]


def _supervisor_options(arguments: list[str]) -> SupervisorOptions:
    parsed = SupervisorOptions()
    parsed.parseOptions(arguments)
    return parsed


def _metrics(options: Options) -> tuple[Metrics | None, Any]:
    """
    The metrics addon (``--metrics-port``, or a worker's ``--metrics-dir``)
    and the registry it is served from (``None`` in a worker, whose
    supervisor serves the directory), or ``(None, None)``.
    """
    if options["metrics-dir"] is not None:
        use_directory(options["metrics-dir"])
        from prometheus_client import disable_created_metrics

        disable_created_metrics()
        return Metrics(None), None
    if options["metrics-endpoint"] is None:
        return None, None
    from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

    disable_created_metrics()  # no *_created series: one line per counter, not two
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return Metrics(registry), registry


def _running(
    options: Options, reactor: Any, listening: list[Callable[[], Deferred[Any]]],
    registry: Any, metrics: Metrics | None,
) -> MultiService | None:
    """
    The service around the proxy's that serves ``--metrics-port`` (health,
    and the metrics of *registry*) and delays the drain (``--drain-delay``),
    and samples *metrics* once a second; ``None`` when there is none of it.
    """
    endpoint = options["metrics-endpoint"]
    if endpoint is None and not options["drain-delay"] and metrics is None:
        return None
    health = Health()
    site = None
    if endpoint is not None:
        site = status_site(health, registry, metrics.sample if metrics else lambda: None)
    running = RunningService(
        reactor, health, listening=listening, drain_delay=options["drain-delay"], site=site,
        endpoint=None if endpoint is None else serverFromString(reactor, endpoint),
        on_stop=metrics.sample if metrics is not None else lambda: None,
    )
    if metrics is not None:
        sampling = TimerService(1.0, metrics.sample)
        sampling.clock = reactor
        sampling.setServiceParent(running)
    return running




class _Closing(MultiService):
    """
    Stops its services, then calls each of *closers* (the --save file's,
    the web UI's store's): the flows that end while the proxy drains are
    saved and stored first.  (A MultiService stops its children all at
    once, so a sibling would close them too soon.)
    """

    def __init__(self, *closers: Callable[[], object]) -> None:
        super().__init__()
        self._closers = closers

    def stopService(self) -> Deferred[None]:
        def close(result: object) -> object:
            for closer in self._closers:
                closer()
            return result

        stopped: Deferred[None] = super().stopService()
        return stopped.addBoth(close)


def _now() -> datetime:
    return datetime.now(UTC)


def _certificate_store(options: Options) -> CertificateStore:
    """
    The store minting certificates for intercepted tunnels, from ``--ca`` or
    the CA in ``--ca-dir`` (created there on first start).

    :raises SystemExit: with one line, when the CA cannot be loaded or made.
    """
    directory = Path(options["ca-dir"]).expanduser()
    try:
        if options["ca"] is not None:
            authority = CertificateAuthority.load(Path(options["ca"]), now=_now())
        else:
            authority, created = CertificateAuthority.load_or_create(directory, now=_now())
            if created:
                _log.info(
                    "created a CA for intercepting HTTPS in {directory}; clients must trust "
                    "{certificate} (or fetch it from http://twistproxy/ through the proxy)",
                    directory=str(directory),
                    certificate=str(directory / CA_CERT_PEM),
                )
    except (CertificateAuthorityError, OSError) as e:
        option = f"--ca {options['ca']}" if options["ca"] is not None else f"--ca-dir {directory}"
        reason = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else e
        raise SystemExit(f"twistproxy: {option}: {reason}") from e
    return CertificateStore(authority, now=_now)
