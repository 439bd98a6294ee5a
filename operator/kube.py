"""The few API calls the operator makes, over kopf's own logged-in session.

    kube = Kube(settings)                           # main.run(); used inside kopf's handlers
    body = await kube.get_job("ns", "name")         # None when it is gone
    created = await kube.create(manifest)           # False when it already existed (409)

One client, kopf's: the official client's API classes load every model (about 80 MiB of
RSS with kubernetes 37) and are synchronous (a thread per call), while kopf already holds
an aiohttp session with the operator's credentials and logs in again on a 401. Its
request function is kopf-internal (`kopf._cogs`; kopf is pinned in constraints.txt), so
it is used here only. Refusals are raised as the official client's ApiException (cheap to
import), the one error type the rest of the operator handles. Bodies are plain dicts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import aiohttp
import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import auth as kopf_auth
from kopf._cogs.clients import errors as kopf_errors
from kubernetes.client.exceptions import ApiException

from llmtrain.operator import api

if TYPE_CHECKING:
    from kubernetes import client

Body = dict[str, Any]
REQUEST_TIMEOUT = 30.0  # seconds; a hung call must not hold a job's pass forever
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
# Where each child kind lives: (API prefix, plural).
KINDS = {
    "Pod": ("api/v1", "pods"),
    "ConfigMap": ("api/v1", "configmaps"),
    "Service": ("api/v1", "services"),
    "NetworkPolicy": ("apis/networking.k8s.io/v1", "networkpolicies"),
    "Workload": ("apis/kueue.x-k8s.io/v1beta2", "workloads"),  # kueue.py
    "PodGroup": ("apis/scheduling.x-k8s.io/v1alpha1", "podgroups"),  # gang.py
}
JOBS = f"apis/{api.GROUP}/{api.VERSION}"
log = logging.getLogger(__name__)
# kopf logs every failed attempt at ERROR before it raises; here a 404, 409 or 403 is often the
# expected answer, and the callers log what is really a failure.
_requests_log = logging.getLogger(__name__ + ".requests")
_requests_log.setLevel(logging.CRITICAL)


def api_client(pool: int = 16) -> client.ApiClient:
    """The official client (for the CLI): in-cluster credentials when running in a pod (and
    no KUBECONFIG), else a kubeconfig."""
    import os

    from kubernetes import client, config

    cfg = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def path(prefix: str, plural: str, namespace: str | None, name: str = "", sub: str = "") -> str:
    """`api/v1/namespaces/ns/pods/name`, the parts that are given."""
    parts = [prefix, *(("namespaces", namespace) if namespace else ()), plural, name, sub]
    return "/".join(p for p in parts if p)


class Kube:
    def __init__(self, settings: kopf.OperatorSettings, concurrency: int = 32) -> None:
        self.settings = settings
        # Bounds our requests in flight (kopf's session does not): a burst of jobs queues
        # here rather than as hundreds of connections at the apiserver.
        self._limit = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async def _call(
        self,
        method: str,
        url: str,
        payload: Body | None = None,
        merge: bool = False,
        **context: Any,
    ) -> Any:
        async with self._limit:
            try:
                # backoffs=(): no retries here; kopf would retry a 403, which is a refusal.
                rsp = await kopf_api.request(
                    method,
                    url,
                    payload=payload,
                    headers=MERGE_PATCH if merge else None,
                    timeout=self._timeout,
                    backoffs=(),
                    settings=self.settings,
                    logger=_requests_log,
                    **context,
                )
            except kopf_errors.APIError as e:
                raise api_exception(e) from e
            async with rsp:
                return await rsp.json()

    async def get_job(self, namespace: str, name: str) -> Body | None:
        try:
            body: Body = await self._call("get", path(JOBS, api.PLURAL, namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return slim(body)

    async def patch_job_status(
        self, namespace: str, name: str, status: Body, resource_version: str | None
    ) -> Body | None:
        """Merge-patch the status subresource, only if the job is still at
        `resource_version` (optimistic concurrency); None on a conflict."""
        patch: Body = {"status": status}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        url = path(JOBS, api.PLURAL, namespace, name, "status")
        try:
            body: Body = await self._call("patch", url, patch, merge=True)
        except ApiException as e:
            if e.status in (404, 409):
                return None
            raise
        return slim(body)

    async def delete_job(self, namespace: str, name: str) -> None:
        url = path(JOBS, api.PLURAL, namespace, name)
        try:
            await self._call("delete", url, {"propagationPolicy": "Background"})
        except ApiException as e:
            if e.status != 404:
                raise

    async def create_custom(
        self, group: str, version: str, plural: str, body: Body, namespace: str | None = None
    ) -> None:
        await self._call("post", path(f"apis/{group}/{version}", plural, namespace), body)

    async def create_before_login(
        self, group: str, version: str, plural: str, body: Body, namespace: str | None = None
    ) -> None:
        """create_custom() for kopf's startup handlers: kopf logs in only once they are
        done, so this logs in itself, as kopf will (login_via_client), for this call."""
        info = kopf.login_via_client(logger=log, settings=self.settings)
        if info is None:
            raise kopf.PermanentError("no credentials: neither in-cluster nor a kubeconfig")
        context = kopf_auth.APIContext(info)
        try:
            url = path(f"apis/{group}/{version}", plural, namespace)
            await self._call("post", url, body, context=context)
        finally:
            await context.session.close()

    async def get_pod(self, namespace: str, name: str) -> Body | None:
        try:
            body: Body = await self._call("get", path("api/v1", "pods", namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return body

    async def list_pods(self, namespace: str, selector: str) -> list[Body]:
        query = urllib.parse.urlencode({"labelSelector": selector})
        body = await self._call("get", path("api/v1", "pods", namespace) + "?" + query)
        items: list[Body] = body["items"]
        return items

    async def get(
        self, prefix: str, plural: str, name: str, namespace: str | None = None
    ) -> Body | None:
        """Any object by its API prefix (`apis/group/version`); None when it does not exist."""
        try:
            body: Body = await self._call("get", path(prefix, plural, namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return body

    async def list_objects(self, kind: str, namespace: str, selector: str) -> list[Body]:
        """A child kind's objects in `namespace` matching a label selector."""
        prefix, plural = KINDS[kind]
        query = urllib.parse.urlencode({"labelSelector": selector})
        body = await self._call("get", path(prefix, plural, namespace) + "?" + query)
        items: list[Body] = body["items"]
        return items

    async def create(self, obj: Body) -> bool:
        """Create a child object; False when it already exists, or never will because its
        namespace is being deleted (the job goes with it: nothing to create or report)."""
        prefix, plural = KINDS[obj["kind"]]
        try:
            await self._call("post", path(prefix, plural, obj["metadata"]["namespace"]), obj)
        except ApiException as e:
            if e.status == 409 or namespace_terminating(e):
                return False
            raise
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child object with its default grace period; gone already is fine."""
        prefix, plural = KINDS[kind]
        try:
            await self._call("delete", path(prefix, plural, namespace, name))
        except ApiException as e:
            if e.status != 404:
                raise


def slim(body: Mapping[str, Any]) -> Body:
    """The job as the operator keeps it: without metadata.managedFields (the bulk of a
    small object, read by nobody here). Shallow: nothing in the operator edits a body."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "metadata": meta}


def api_exception(e: kopf_errors.APIError) -> ApiException:
    """kopf's error as the official client's: status, reason and the Status body."""
    payload = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else None
    try:
        phrase = HTTPStatus(e.status).phrase
    except ValueError:
        phrase = ""
    reason = (payload or {}).get("reason") or phrase
    body = json.dumps(payload) if payload is not None else (str(e.args[0]) if e.args else "")
    return ApiException(status=e.status, reason=reason, body=body)


def namespace_terminating(e: ApiException) -> bool:
    """The apiserver refused a create because the namespace is being deleted."""
    try:
        causes = json.loads(e.body or "")["details"]["causes"]
    except (TypeError, ValueError, KeyError):
        return False
    return any(c.get("reason") == "NamespaceTerminating" for c in causes)
