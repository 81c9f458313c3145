"""kopf handlers for EmailPipeline: each decides little and calls into `reconcile`.

Spec changes, operator restarts and a periodic timer all run the same reconciliation, so an
object deleted or edited by hand is put back within one timer interval
(MAILPIPE_OPERATOR_RESYNC_SECONDS, default 30).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

import kopf

from mailpipe.config import parse_spec
from mailpipe.errors import ConfigError
from mailpipe_operator import reconcile
from mailpipe_operator.builders.meta import API_GROUP, API_VERSION, PLURAL, Pipeline
from mailpipe_operator.kube import KubernetesClient, load_api_client

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
RESYNC_SECONDS = float(os.environ.get("MAILPIPE_OPERATOR_RESYNC_SECONDS", "30"))
DELETION_RETRY_SECONDS = 15


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Handler progress and the last handled spec live in annotations, which the CRD's structural
    # schema keeps; fields of kopf's own in `status` would be pruned.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    memo["kube"] = KubernetesClient(load_api_client())


def _pipeline(body: kopf.Body) -> Pipeline:
    meta = body["metadata"]
    source = f"EmailPipeline {meta['namespace']}/{meta['name']}"
    try:
        spec = parse_spec(dict(body.get("spec") or {}), source=source)
    except ConfigError as error:
        # The CRD's schema rejects most bad specs; what only the model checks cannot be fixed by
        # retrying, so kopf stops until the spec changes.
        kopf.warn(body, reason="InvalidSpec", message=str(error))
        raise kopf.PermanentError(str(error)) from error
    return Pipeline(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], spec=spec)


def _run(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger) -> None:
    pipeline = _pipeline(body)
    status = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 0)
    now = datetime.now(timezone.utc)
    if pipeline.spec.paused:
        patch.status.update(reconcile.paused_status(status, generation=generation, now=now))
        return
    new_status, events = reconcile.reconcile(
        memo["kube"], pipeline=pipeline, generation=generation, status=status, now=now, logger=logger
    )
    patch.status.update(new_status)
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
def apply_spec(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    _run(body, patch, memo, logger)


@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    _run(body, patch, memo, logger)


@kopf.on.delete(*RESOURCE)
def hold_deletion(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Keep the finalizer while emails are queued; owner references then delete every object."""
    pipeline = _pipeline(body)
    annotations = dict(body["metadata"].get("annotations") or {})
    blocker = reconcile.deletion_blocker(memo["kube"], pipeline, annotations=annotations, logger=logger)
    if blocker is not None:
        kopf.warn(body, reason="DeletionBlocked", message=blocker)
        raise kopf.TemporaryError(blocker, delay=DELETION_RETRY_SECONDS)
    logger.info("deleting the pipeline; its objects go with it through their owner references")
