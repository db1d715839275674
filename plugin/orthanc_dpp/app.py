"""The composition root: every object of the plugin, built from valid settings.

:class:`DppApp` is what the plugin runs once its configuration is valid; an
invalid configuration gives no ``DppApp`` (the adapter registers
:func:`orthanc_dpp.rest.routes.invalid_configuration` instead). It knows Orthanc
only through :class:`OrthancFacts` (what it reads of Orthanc's
configuration) and :class:`Ports` (the objects that call into Orthanc, built
by the adapter), so nothing here imports ``orthanc``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pydicom
from pynetdicom import evt

from orthanc_dpp import __version__
from orthanc_dpp.config import Settings
from orthanc_dpp.dicom import tls
from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper
from orthanc_dpp.dicom.modalities import ModalityRegistry, matching_options
from orthanc_dpp.dicom.outbound import Calling
from orthanc_dpp.dicom.scp.find_responses import ResponseCache
from orthanc_dpp.dicom.scp.get import GetHandler
from orthanc_dpp.dicom.scp.handlers import (
    EchoHandler,
    FindHandler,
    FindOptions,
    StoreHandler,
    StoreOptions,
)
from orthanc_dpp.dicom.scp.listener import DppListener, ListenerSettings
from orthanc_dpp.dicom.scp.move import MoveHandler
from orthanc_dpp.dicom.scp.retrieve import RetrieveOptions
from orthanc_dpp.dicom.scu.jobs import Jobs
from orthanc_dpp.metrics import Metrics
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.snapshot import SnapshotStore
from orthanc_dpp.model.sop import PROTOCOL_APPROVAL_STORAGE
from orthanc_dpp.model.usage import ProtocolUsage
from orthanc_dpp.rest.activity import ActivityLog
from orthanc_dpp.rest.archives import RemoteArchives
from orthanc_dpp.rest.protocols import DppRestApi
from orthanc_dpp.rest.routes import Route, dpp_routes
from orthanc_dpp.storage.approved_content import ApprovedContent, ContentApi
from orthanc_dpp.storage.decoding import DatasetLimits
from orthanc_dpp.storage.feed import FreshInstances, IndexFeed, report_duplicate
from orthanc_dpp.storage.library import IndexedSource, OrthancApi, ProtocolLibrary, Stored

log = logging.getLogger("orthanc_dpp")

#: Seconds between re-reads of Orthanc's modality list (besides the
#: UPDATED_MODALITIES event, which this node's own changes raise).
MODALITY_REFRESH = 30.0


@dataclass(frozen=True)
class OrthancFacts:
    """What the plugin needs to know of Orthanc's own configuration."""

    #: ``OverwriteInstances``: a newcomer with a stored SOP Instance UID replaces it.
    overwrite_instances: bool
    #: ``MetricsEnabled`` (default true): when false, nothing is counted or published.
    metrics_enabled: bool
    #: ``SslEnabled``: Orthanc's REST API is served over HTTPS.
    https: bool
    #: The ``DicomAlwaysAllow*`` options, as :meth:`AccessPolicy.from_orthanc` reads them.
    access_configuration: Mapping[str, Any]
    #: ``StrictAetComparison`` and ``DicomCheckModalityHost`` (:func:`matching_options`).
    modality_matching: Mapping[str, bool]

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> OrthancFacts:
        return cls(
            overwrite_instances=configuration.get("OverwriteInstances") is True,
            metrics_enabled=configuration.get("MetricsEnabled", True) is not False,
            https=configuration.get("SslEnabled") is True,
            access_configuration={
                k: v for k, v in configuration.items() if k.startswith("DicomAlwaysAllow")
            },
            modality_matching=matching_options(configuration),
        )


@dataclass(frozen=True)
class Ports:
    """The Orthanc-facing objects the adapter builds and hands in."""

    api: OrthancPort
    snapshots: SnapshotStore
    activity: ActivityLog
    platform: Platform
    #: Where the protocols' usage is saved with the index snapshot (None: not saved).
    usage_snapshots: SnapshotStore | None = None


class Platform(Protocol):
    """The running Orthanc and Python plugin (the adapter's ``RunningPlugin``)."""

    def read_versions(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class OrthancPort(OrthancApi, ContentApi, Protocol):
    """Orthanc's REST API as the library and approvals use it, and the fast read of a file."""

    def stored_file(self, orthanc_id: str) -> bytes: ...


def listener_settings(settings: Settings) -> ListenerSettings:
    """The part of the plugin's settings the DPP listener uses."""
    return ListenerSettings(
        ae_title=settings.ae_title,
        port=settings.port,
        bind_address=settings.bind_address,
        check_called_ae_title=settings.check_called_ae_title,
        maximum_associations=settings.maximum_associations,
        maximum_connections_per_address=settings.maximum_connections_per_address,
        unknown_callers_maximum_associations=settings.unknown_callers_maximum_associations,
        acse_timeout=settings.acse_timeout,
        dimse_timeout=settings.dimse_timeout,
        network_timeout=settings.network_timeout,
        maximum_pdu_size=settings.maximum_pdu_size,
        maximum_dataset_size=settings.maximum_dataset_size,
        tls=settings.tls,
    )


def tls_client_context(settings: Settings) -> ssl.SSLContext | None:
    """DICOM TLS for C-MOVE to modalities with ``UseDicomTls``; None when off or broken."""
    if not settings.tls.enabled:
        return None
    try:
        return tls.client_context(settings.tls)
    except (OSError, ValueError) as exc:
        log.error("DICOM TLS for C-MOVE cannot be set up (%s): moves to TLS modalities fail", exc)
        return None


class DppApp:
    """Everything the plugin runs, wired together from valid settings."""

    def __init__(
        self, settings: Settings, facts: OrthancFacts, ports: Ports, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.facts = facts
        self.ports = ports
        self.metrics = metrics
        self.received_hook = False  # set by the adapter when it installs the hook
        self.jobs = Jobs()  # background retrieves from other archives
        limits = self.limits = DatasetLimits(
            maximum_size=settings.maximum_dataset_size,
            maximum_depth=settings.maximum_nesting_depth,
            maximum_values=settings.maximum_values_per_key,
        )
        # One SOP Instance UID, one protocol; Orthanc's OverwriteInstances
        # says whether a newcomer replaces the stored one.
        self.index = ProtocolIndex()
        self.index.newest_wins = facts.overwrite_instances
        fresh = self.fresh = FreshInstances()  # this node's own stores, for the change feed
        api = ports.api
        self.library = ProtocolLibrary(
            api,
            settings.normalization,
            stored_as=self._stored_as,
            overwrite=facts.overwrite_instances,
            fresh=fresh,
            # Nothing is stored before the index knows what is stored already
            # (with Enabled false there is no index to wait for).
            ready=lambda: not settings.enabled or self.feed.ready,
        )
        self.approved_content = ApprovedContent(api, self.index)
        self.usage = ProtocolUsage()  # performed instances per defined protocol, by the feed
        self.feed = IndexFeed(
            self.library,
            self.index,
            poll_interval=settings.change_poll_interval,
            reconcile_interval=settings.reconcile_interval,
            on_tick=self.refresh_modalities,
            snapshots=ports.snapshots,
            snapshot_interval=settings.snapshot_interval,
            fresh=fresh,
            fast_load=settings.fast_index_load,
            read_file=api.stored_file,
            usage=self.usage,
            usage_snapshots=ports.usage_snapshots,
        )
        # Peers and move destinations: Orthanc's own modality list, re-read
        # on UPDATED_MODALITIES and every MODALITY_REFRESH seconds.
        self.modalities = ModalityRegistry()
        self._modalities_due = 0.0
        policy = AccessPolicy.from_orthanc(
            facts.access_configuration,
            settings.unknown_callers,
            unknown_may_store=settings.unknown_callers_may_store,
        )
        gate = Gatekeeper(self.modalities, policy)
        self.find_cache = ResponseCache(settings.find_response_cache_size << 20)
        client_tls = tls_client_context(settings)
        source = IndexedSource(self.index, self.library)
        retrieve_options = RetrieveOptions(
            report_missing=settings.report_missing_instances,
            pending_interval=settings.pending_response_interval,
        )
        handlers: dict[Any, Callable[..., Any]] = {
            evt.EVT_C_ECHO: EchoHandler(gate, metrics),
            evt.EVT_C_STORE: StoreHandler(
                self.library,
                gate,
                self.on_stored,
                limits,
                metrics,
                StoreOptions(approval_storers=settings.approval_storers),
            ),
            evt.EVT_C_FIND: FindHandler(
                self.index,
                gate,
                FindOptions(
                    max_results=settings.maximum_find_results,
                    time_limit=settings.find_time_limit,
                ),
                is_ready=lambda: self.feed.ready,
                limits=limits,
                metrics=metrics,
                cache=self.find_cache,
            ),
            evt.EVT_C_GET: GetHandler(
                source, gate, retrieve_options, limits=limits, metrics=metrics
            ),
            evt.EVT_C_MOVE: MoveHandler(
                source,
                gate,
                retrieve_options,
                limits=limits,
                tls_context=client_tls,
                metrics=metrics,
            ),
        }
        self.listener = DppListener(
            listener_settings(settings), handlers, metrics, judge=gate.caller
        )
        if not settings.enabled:
            self.listener.status.state = "disabled"
        self.rest = DppRestApi(
            self.library,
            self.index,
            self.status,
            self.on_stored,
            self.on_deleted,
            limits=limits,
            maximum_upload=settings.maximum_upload_size,
            metrics=metrics,
            activity=ports.activity,
            content=self.approved_content,
            ae_title=settings.ae_title,
            software_version=__version__,
            usage=self.usage,
        )
        # This plugin as the SCU of other DPP archives (Orthanc's modalities).
        self.remote = RemoteArchives(
            Calling(
                settings.ae_title,
                acse_timeout=settings.acse_timeout,
                dimse_timeout=settings.dimse_timeout,
                network_timeout=settings.network_timeout,
                maximum_pdu_size=settings.maximum_pdu_size,
                tls_context=client_tls,
                limits=limits,
            ),
            self.modalities,
            self.store_retrieved,
            lambda uid: self.index.get(uid) is not None,
            self.jobs,
            refresh=lambda: self.refresh_modalities(force=True),
            source=source,  # what a push sends: the originals, as C-GET and C-MOVE send them
        )

    # -- events --------------------------------------------------------------

    def _stored_as(self, sop_instance_uid: str) -> str | None:
        entry = self.index.get(sop_instance_uid)
        return entry.orthanc_id if entry is not None else None

    def on_stored(self, stored: Stored) -> None:
        if stored.dataset is None or not stored.orthanc_id:
            return
        other = self.index.put(stored.orthanc_id, stored.dataset)
        self.fresh.indexed(stored.orthanc_id)
        if other is not None:  # stored through another node meanwhile
            report_duplicate(stored.sop_instance_uid, other, stored.orthanc_id, self.index)
        if stored.sop_class_uid == PROTOCOL_APPROVAL_STORAGE:
            # What it approves is the content its protocols hold now (approved_content.py).
            entry = self.index.get_by_orthanc_id(stored.orthanc_id)
            if entry is not None:
                self.approved_content.bind(entry)

    def store_retrieved(self, ds: pydicom.Dataset, sop_class: str) -> None:
        """A protocol received by C-GET from another archive: stored as a C-STORE would be."""
        self.library.store(ds, context_sop_class=sop_class, on_stored=self.on_stored)

    def on_deleted(self, orthanc_id: str) -> None:
        self.index.remove(orthanc_id)
        self.approved_content.forget(orthanc_id)

    # -- Orthanc's changes (called on Orthanc's callback thread: return at once)

    def new_instance(self) -> None:
        self.feed.wake()

    def deleted(self, orthanc_id: str) -> None:
        self.feed.forget(orthanc_id)

    def modalities_changed(self) -> None:
        self._modalities_due = 0.0  # re-read on the worker thread, now
        self.feed.wake()

    def refresh_modalities(self, force: bool = False) -> None:
        """Re-read ``/modalities?expand`` when due (worker threads only, never a callback)."""
        now = time.monotonic()
        if not force and now < self._modalities_due:
            return
        self._modalities_due = now + MODALITY_REFRESH
        self.modalities.refresh(
            lambda: json.loads(self.ports.api.get("/modalities?expand")),
            **self.facts.modality_matching,
        )

    def started(self) -> bool:
        """Start the listener and the index feed; False when ``Enabled`` is false."""
        if not self.settings.enabled:
            return False
        listener = self.listener

        def start_listener() -> None:
            self.ports.platform.read_versions()
            self.refresh_modalities(force=True)
            listener.start()

        # On a thread: the modality list comes from Orthanc's REST API, which
        # a change callback must not call, and no socket problem may ever
        # hold Orthanc's callback thread.
        threading.Thread(target=start_listener, name="dpp-listener-start").start()
        self.feed.start()
        return True

    def stopped(self) -> None:
        """Stop the jobs, the listener and the index feed, in this order."""
        self.jobs.stop()
        self.listener.stop()
        self.feed.stop()

    def routes(self) -> list[Route]:
        """The ``/dpp`` routes, in registration order."""
        return dpp_routes(self.rest, self.remote)

    def status(self) -> dict[str, Any]:
        """The content of ``GET /dpp/status``."""
        return status_report(self, [], self.ports.platform, self.received_hook)


def status_report(
    app: DppApp | None, errors: list[str], platform: Platform, received_hook: bool
) -> dict[str, Any]:
    """``/dpp/status``: of a running app, or (``app`` None) of an invalid configuration."""
    s = app.settings if app else None
    listener = app.listener.status if app else None
    feed = app.feed if app else None
    cache = app.find_cache if app else ResponseCache(0)
    index = app.index if app else ProtocolIndex()
    return {
        "Version": __version__,
        "Platform": {**platform.describe(), "ReceivedInstanceHook": received_hook},
        "Configuration": {"Valid": not errors, "Errors": errors},
        "Listener": {
            "State": listener.state if listener else "stopped",
            "Error": listener.error if listener else None,
            "AETitle": s.ae_title if s else None,
            "Port": s.port if s else None,
            "BindAddress": s.bind_address if s else None,
            "AssociationsServed": listener.associations_served if listener else 0,
        },
        "Index": {
            "Ready": bool(feed and feed.ready),
            "LastChange": feed.last_seq if feed else 0,
            "LoadSeconds": feed.load_seconds if feed else None,
            "LoadProgress": feed.load_progress() if feed else None,
            "LastError": feed.last_error if feed else None,
        },
        "FindResponseCache": {
            "Entries": len(cache),
            "Bytes": cache.bytes,
            "MaximumBytes": cache.max_bytes,
            "Hits": cache.hits,
            "Misses": cache.misses,
        },
        "Protocols": {"Total": len(index), "BySOPClass": index.counts_by_sop_class()},
    }
