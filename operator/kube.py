"""The few API calls the operator makes, as coroutines over the kubernetes client.

    kube = Kube()                                   # in-cluster, else $KUBECONFIG
    body = await kube.get_job("ns", "name")         # None when it is gone
    created = await kube.create(manifest)           # False when it already existed (409)

The client is synchronous, so calls run on a small thread pool; responses are decoded
from JSON without building client models (cheaper with hundreds of jobs).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from llmtrain.operator import api

Body = dict[str, Any]
REQUEST_TIMEOUT = 30.0  # seconds; a hung call must not hold a job's pass forever


def api_client(pool: int = 16) -> client.ApiClient:
    """In-cluster credentials when running in a pod (and no KUBECONFIG), else a kubeconfig."""
    cfg = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api_client_: client.ApiClient | None = None, workers: int = 16) -> None:
        self.client = api_client_ or api_client(workers)
        self.core = client.CoreV1Api(self.client)
        self.networking = client.NetworkingV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="kube")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()  # type: ignore[no-untyped-call]

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        call = functools.partial(
            fn, *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs
        )
        rsp = await loop.run_in_executor(self._pool, call)
        data = rsp.data
        return json.loads(data) if data else None

    async def get_job(self, namespace: str, name: str) -> Body | None:
        try:
            body: Body = await self._call(
                self.custom.get_namespaced_custom_object,
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                name,
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return body

    async def patch_job_status(
        self, namespace: str, name: str, status: Body, resource_version: str | None
    ) -> Body | None:
        """Merge-patch the status subresource, only if the job is still at
        `resource_version` (optimistic concurrency); None on a conflict."""
        patch: Body = {"status": status}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        try:
            body: Body = await self._call(
                self.custom.patch_namespaced_custom_object_status,
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                name,
                patch,
            )
        except ApiException as e:
            if e.status in (404, 409):
                return None
            raise
        return body

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await self._call(
                self.custom.delete_namespaced_custom_object,
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                name,
                propagation_policy="Background",
            )
        except ApiException as e:
            if e.status != 404:
                raise

    async def create_custom(
        self, group: str, version: str, plural: str, body: Body, namespace: str | None = None
    ) -> None:
        if namespace is None:
            await self._call(self.custom.create_cluster_custom_object, group, version, plural, body)
        else:
            await self._call(
                self.custom.create_namespaced_custom_object, group, version, namespace, plural, body
            )

    async def get_pod(self, namespace: str, name: str) -> Body | None:
        try:
            body: Body = await self._call(self.core.read_namespaced_pod, name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return body

    async def list_pods(self, namespace: str, selector: str) -> list[Body]:
        body = await self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        items: list[Body] = body["items"]
        return items

    async def create(self, obj: Body) -> bool:
        """Create a child object; False when it already exists, or never will because its
        namespace is being deleted (the job goes with it: nothing to create or report)."""
        creators: dict[str, Callable[..., Any]] = {
            "Pod": self.core.create_namespaced_pod,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }
        try:
            await self._call(creators[obj["kind"]], obj["metadata"]["namespace"], obj)
        except ApiException as e:
            if e.status == 409 or namespace_terminating(e):
                return False
            raise
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child object with its default grace period; gone already is fine."""
        deleters: dict[str, Callable[..., Any]] = {
            "Pod": self.core.delete_namespaced_pod,
            "ConfigMap": self.core.delete_namespaced_config_map,
            "Service": self.core.delete_namespaced_service,
            "NetworkPolicy": self.networking.delete_namespaced_network_policy,
        }
        try:
            await self._call(deleters[kind], name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise


def namespace_terminating(e: ApiException) -> bool:
    """The apiserver refused a create because the namespace is being deleted."""
    try:
        causes = json.loads(e.body or "")["details"]["causes"]
    except (TypeError, ValueError, KeyError):
        return False
    return any(c.get("reason") == "NamespaceTerminating" for c in causes)
