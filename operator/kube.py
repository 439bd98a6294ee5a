"""The few API calls the operator makes, over kopf's own logged-in session.

    kube = Kube(settings)                           # main.run(); used inside kopf's handlers
    body = await kube.get_job("ns", "name")         # None when it is gone
    created = await kube.create(manifest)           # False when it already existed (409)

    info = login(settings=settings, logger=log)     # outside kopf (llmtrain cleanup):
    kube = Kube(settings, kopf_auth.APIContext(info))

One client, kopf's, and no official `kubernetes` client in the operator: its API classes load
every model (about 30 MiB of RSS, and kopf imports them too whenever the package is
installed; the operator image does not install it) and are synchronous (a thread per call),
while kopf already holds an aiohttp session with the operator's credentials and logs in again
on a 401. Its request function is kopf-internal (`kopf._cogs`; kopf is pinned in
constraints.txt), so it is used here only. Refusals are raised as ApiException (status,
reason, the Status body), the one error type the rest of the operator handles. Bodies are
plain dicts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import auth as kopf_auth
from kopf._cogs.clients import errors as kopf_errors

from llmtrain.operator import api

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


class ApiException(Exception):  # noqa: N818 (the official client's name, kept for readers)
    """The apiserver refused a request: its HTTP status, reason and Status body (JSON)."""

    def __init__(self, status: int | None = None, reason: str | None = None, body: str = ""):
        super().__init__(f"({status}) {reason}")
        self.status, self.reason, self.body = status, reason, body


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def login(*, settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's login handler. In a pod: its ServiceAccount token, at the address in the pod's
    KUBERNETES_SERVICE_HOST/PORT (as client-go does; kopf's own service-account login needs
    cluster DNS). Elsewhere a kubeconfig, read by the official client when it is installed
    (exec plugins, auth providers), else by kopf."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if host and port and token.exists():
        ca, ns = SERVICE_ACCOUNT / "ca.crt", SERVICE_ACCOUNT / "namespace"
        return kopf.ConnectionInfo(
            server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
            ca_path=str(ca) if ca.exists() else None,
            token=token.read_text().strip() or None,
            default_namespace=ns.read_text().strip() if ns.exists() else None,
            trust_env=settings.networking.trust_env,
        )
    if importlib.util.find_spec("kubernetes") is not None:
        return kopf.login_via_client(settings=settings, **kwargs)
    return kopf.login_with_kubeconfig(settings=settings, **kwargs)


def path(prefix: str, plural: str, namespace: str | None, name: str = "", sub: str = "") -> str:
    """`api/v1/namespaces/ns/pods/name`, the parts that are given."""
    parts = [prefix, *(("namespaces", namespace) if namespace else ()), plural, name, sub]
    return "/".join(p for p in parts if p)


class Kube:
    def __init__(
        self,
        settings: kopf.OperatorSettings,
        context: kopf_auth.APIContext | None = None,
        concurrency: int = 32,
    ) -> None:
        self.settings = settings
        # None inside kopf's handlers, where kopf supplies its logged-in session per call.
        self.context = context
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
        if self.context is not None:
            context.setdefault("context", self.context)
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

    async def list_jobs(self, namespace: str | None, limit: int, token: str | None) -> Body:
        """One page of jobs (every namespace when None): the list body, `metadata.continue`
        naming the next page."""
        query: dict[str, Any] = {"limit": limit, **({"continue": token} if token else {})}
        url = path(JOBS, api.PLURAL, namespace) + "?" + urllib.parse.urlencode(query)
        page: Body = await self._call("get", url)
        return page

    async def patch_job(self, namespace: str, name: str, patch: Body) -> None:
        """A JSON merge patch of the job itself (not its status)."""
        await self._call("patch", path(JOBS, api.PLURAL, namespace, name), patch, merge=True)

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
        done, so this logs in itself, as kopf will (login), for this call."""
        info = login(logger=log, settings=self.settings)
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

    async def delete(
        self, kind: str, namespace: str, name: str, grace_seconds: int | None = None
    ) -> None:
        """Delete a child object, with its own grace period unless `grace_seconds` says
        otherwise; gone already is fine."""
        prefix, plural = KINDS[kind]
        options = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        try:
            await self._call("delete", path(prefix, plural, namespace, name), options)
        except ApiException as e:
            if e.status != 404:
                raise


def slim(body: Mapping[str, Any]) -> Body:
    """The job as the operator keeps it: without metadata.managedFields (the bulk of a
    small object, read by nobody here). Shallow: nothing in the operator edits a body."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "metadata": meta}


def api_exception(e: kopf_errors.APIError) -> ApiException:
    """kopf's error as ours: status, reason and the Status body."""
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
