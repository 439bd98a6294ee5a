"""What a job may change in its pods: `spec.resources.podTemplate`, an allow-list.

    podTemplate:
      metadata: {labels: {team: nlp}, annotations: {...}}
      spec:
        volumes: [{name: certs, secret: {secretName: ca}}]
        containers:
        - {name: trainer, volumeMounts: [{name: certs, mountPath: /certs}]}   # adds to ours
        - {name: log-shipper, image: fluent/fluent-bit:3.1}                   # a sidecar
        imagePullSecrets: [{name: regcred}]

A user who may create LLMTrainingJobs but not pods must not get, through the operator, a pod
they could not create themselves: a hostPath mount, a privileged or root container, another
ServiceAccount's token. So this is not a free-form pod. Only the fields below exist (anything
else is an unknown field, here and in the CRD), volumes are those the `restricted` Pod Security
profile allows minus ServiceAccount tokens, and the builders (resources.py) force the restricted
securityContext on every container, the worker ServiceAccount and no API token, whatever this
says. Scheduling (nodeSelector, tolerations, affinity, priority) has its own fields in
`spec.resources`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from llmtrain.trainer.config import Model, SecretKeyRef, cel

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_OPAQUE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
# The operator's own volume names: a template may not replace them.
RESERVED_VOLUMES = ("storage", "dshm", "config")
TRAINER = "trainer"


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(QUANTITY, value):
        raise ValueError(f"{value!r} is not a quantity (e.g. 500m, 8, 64Gi)")
    return value


# "8", "500m", "64Gi"; the apiserver stores them as int-or-string.
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY}),
]


class EnvVar(Model):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!(has(self.value) && has(self.secretKeyRef))",
                "set value or secretKeyRef, not both",
            ),
        )
    )

    name: str = Field(min_length=1, description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    secret_key_ref: SecretKeyRef | None = Field(None, description="Take the value from a Secret.")

    def manifest(self) -> dict[str, Any]:
        """As a core/v1 EnvVar."""
        ref = self.secret_key_ref
        if ref is not None:
            secret = {"name": ref.name, "key": ref.key}
            return {"name": self.name, "valueFrom": {"secretKeyRef": secret}}
        return {"name": self.name, "value": self.value or ""}


class NameRef(Model):
    name: str = Field(min_length=1, description="Name of the object in the job's namespace.")


class EnvFromSource(Model):
    prefix: str | None = Field(None, description="Prefix for every variable name.")
    config_map_ref: NameRef | None = Field(None, description="Every key of a ConfigMap.")
    secret_ref: NameRef | None = Field(None, description="Every key of a Secret.")


class VolumeMount(Model):
    name: str = Field(min_length=1, description="Name of a volume of the pod.")
    mount_path: str = Field(pattern=r"^/", description="Where to mount it.")
    sub_path: str | None = Field(None, description="Directory inside the volume.")
    read_only: bool | None = Field(None, description="Mount read-only.")


class ContainerPort(Model):
    name: str | None = Field(None, description="Port name.")
    container_port: int = Field(ge=1, le=65535, description="Port the container listens on.")
    protocol: Literal["TCP", "UDP", "SCTP"] | None = Field(None, description="Protocol.")


class ResourceRequirements(Model):
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Requested amounts, e.g. {cpu: 100m}."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Limits.")


class Container(Model):
    """A sidecar or init container; or, named `trainer`, additions to the trainer container."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                f"self.name != '{TRAINER}' || !(has(self.image) || has(self.imagePullPolicy) ||"
                " has(self.command) || has(self.args) || has(self.workingDir) ||"
                " has(self.ports) || has(self.resources) || has(self.restartPolicy))",
                "the trainer container may only add env, envFrom and volumeMounts",
            ),
            (f"self.name == '{TRAINER}' || has(self.image)", "a sidecar needs an image"),
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Container name.")
    image: str | None = Field(None, description="Image (sidecars and init containers).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy."
    )
    command: list[str] | None = Field(None, description="Entrypoint.")
    args: list[str] | None = Field(None, description="Arguments.")
    working_dir: str | None = Field(None, description="Working directory.")
    env: list[EnvVar] = Field(default_factory=list, description="Environment variables.")
    env_from: list[EnvFromSource] = Field(
        default_factory=list, description="Variables from ConfigMaps and Secrets."
    )
    ports: list[ContainerPort] = Field(default_factory=list, description="Ports (no hostPort).")
    resources: ResourceRequirements | None = Field(
        None, description="Requests and limits of a sidecar."
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=32, description="Volume mounts."
    )
    restart_policy: Literal["Always"] | None = Field(
        None, description="`Always` on an init container makes it a native sidecar."
    )

    def manifest(self) -> dict[str, Any]:
        """As a core/v1 Container (the builders add the securityContext)."""
        out = self.model_dump(by_alias=True, exclude_none=True, exclude={"env"}, mode="json")
        if self.env:
            out["env"] = [e.manifest() for e in self.env]
        return {k: v for k, v in out.items() if v not in ([], {})}


_SOURCES = (
    "configMap",
    "secret",
    "emptyDir",
    "persistentVolumeClaim",
    "downwardAPI",
    "projected",
    "csi",
    "ephemeral",
)


class ProjectedSource(Model):
    """A projected volume's source; serviceAccountToken is left out: job pods get no token."""

    config_map: dict[str, Any] | None = Field(
        None, description="core/v1 ConfigMapProjection.", json_schema_extra=_OPAQUE
    )
    secret: dict[str, Any] | None = Field(
        None, description="core/v1 SecretProjection.", json_schema_extra=_OPAQUE
    )
    downward_api: dict[str, Any] | None = Field(
        None,
        alias="downwardAPI",
        description="core/v1 DownwardAPIProjection.",
        json_schema_extra=_OPAQUE,
    )
    cluster_trust_bundle: dict[str, Any] | None = Field(
        None, description="core/v1 ClusterTrustBundleProjection.", json_schema_extra=_OPAQUE
    )


class ProjectedVolume(Model):
    sources: list[ProjectedSource] = Field(
        default_factory=list, max_length=16, description="Projected sources."
    )
    default_mode: int | None = Field(None, ge=0, le=511, description="File mode bits.")


class Volume(Model):
    """The volume types of the `restricted` Pod Security profile; no hostPath, no tokens."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "[" + ", ".join(f"has(self.{s})" for s in _SOURCES) + "].filter(x, x).size() == 1",
                "set exactly one volume source: " + ", ".join(_SOURCES),
            ),
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Volume name.")
    config_map: dict[str, Any] | None = Field(
        None, description="core/v1 ConfigMapVolumeSource.", json_schema_extra=_OPAQUE
    )
    secret: dict[str, Any] | None = Field(
        None, description="core/v1 SecretVolumeSource.", json_schema_extra=_OPAQUE
    )
    empty_dir: dict[str, Any] | None = Field(
        None, description="core/v1 EmptyDirVolumeSource.", json_schema_extra=_OPAQUE
    )
    persistent_volume_claim: dict[str, Any] | None = Field(
        None, description="core/v1 PersistentVolumeClaimVolumeSource.", json_schema_extra=_OPAQUE
    )
    downward_api: dict[str, Any] | None = Field(
        None,
        alias="downwardAPI",
        description="core/v1 DownwardAPIVolumeSource.",
        json_schema_extra=_OPAQUE,
    )
    projected: ProjectedVolume | None = Field(
        None, description="core/v1 ProjectedVolumeSource, without serviceAccountToken sources."
    )
    csi: dict[str, Any] | None = Field(
        None, description="core/v1 CSIVolumeSource.", json_schema_extra=_OPAQUE
    )
    ephemeral: dict[str, Any] | None = Field(
        None, description="core/v1 EphemeralVolumeSource.", json_schema_extra=_OPAQUE
    )

    def source(self) -> dict[str, Any]:
        """The volume as core/v1 JSON."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class TemplateMetadata(Model):
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")


_RESERVED_CEL = "[" + ", ".join(f"'{v}'" for v in RESERVED_VOLUMES) + "]"


class TemplateSpec(Model):
    # Lists without a CRD default may be absent, hence has().
    model_config = ConfigDict(
        json_schema_extra=cel(
            *(
                (
                    f"!has(self.{group}) || self.{group}.all(c, !has(c.volumeMounts) ||"
                    f" c.volumeMounts.all(m, m.name in {_RESERVED_CEL} ||"
                    " (has(self.volumes) && self.volumes.exists(v, v.name == m.name))))",
                    "every volumeMount must name a volume of the template (or storage, dshm, "
                    "config)",
                )
                for group in ("containers", "initContainers")
            ),
        )
    )

    containers: list[Container] = Field(
        default_factory=list,
        max_length=8,
        description="`trainer` adds env, envFrom and volumeMounts to the trainer container; "
        "any other name is a sidecar.",
        json_schema_extra=cel(
            (
                "self.all(c, !has(c.restartPolicy))",
                "restartPolicy is only for initContainers (native sidecars)",
            ),
        ),
    )
    init_containers: list[Container] = Field(
        default_factory=list,
        max_length=8,
        description="Init containers, run before training.",
        json_schema_extra=cel(
            (f"self.all(c, c.name != '{TRAINER}')", "an init container may not be called trainer"),
        ),
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=32,
        description="Volumes.",
        json_schema_extra=cel(
            (
                f"self.all(v, !(v.name in {_RESERVED_CEL}))",
                "volume names storage, dshm and config are the operator's",
            ),
        ),
    )
    image_pull_secrets: list[NameRef] = Field(
        default_factory=list, description="Secrets for pulling the images."
    )
    runtime_class_name: str | None = Field(
        None, description="RuntimeClass of the pods, e.g. `nvidia`."
    )
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list,
        description="core/v1 TopologySpreadConstraint list.",
        json_schema_extra={"items": _OPAQUE},
    )
    termination_grace_period_seconds: int | None = Field(
        None, ge=30, le=3600, description="Time to write a checkpoint after SIGTERM (default 120)."
    )


class PodTemplate(Model):
    metadata: TemplateMetadata = Field(
        default_factory=TemplateMetadata, description="Extra labels and annotations."
    )
    spec: TemplateSpec = Field(default_factory=TemplateSpec, description="Pod additions.")


def problems(template: PodTemplate) -> list[tuple[str, str]]:
    """(path below podTemplate, message) for the rules that span fields; the CRD states the
    same rules in CEL (the `cel(...)` of each class above), so both refuse the same input."""
    out: list[tuple[str, str]] = []
    spec = template.spec
    names = {v.name for v in spec.volumes} | set(RESERVED_VOLUMES)
    for i, v in enumerate(spec.volumes):
        at = f"spec.volumes[{i}]"
        if v.name in RESERVED_VOLUMES:
            out.append((f"{at}.name", f"{v.name!r} is one of the operator's volumes"))
        if len(v.source()) != 2:  # the name and one source
            out.append((at, "set exactly one volume source: " + ", ".join(_SOURCES)))
    for alias, containers in (
        ("containers", spec.containers),
        ("initContainers", spec.init_containers),
    ):
        for i, c in enumerate(containers):
            at = f"spec.{alias}[{i}]"
            if c.name == TRAINER and alias == "initContainers":
                out.append((f"{at}.name", "an init container may not be called trainer"))
            elif c.name == TRAINER and set(c.model_fields_set) - _TRAINER_MAY:
                out.append((at, "the trainer container may only add env, envFrom and volumeMounts"))
            elif c.name != TRAINER and c.image is None:
                out.append((f"{at}.image", "a sidecar needs an image"))
            if alias == "containers" and c.restart_policy is not None:
                out.append((f"{at}.restartPolicy", "only for initContainers (native sidecars)"))
            out += [
                (f"{at}.volumeMounts[{j}].name", f"no volume named {m.name!r}")
                for j, m in enumerate(c.volume_mounts)
                if m.name not in names
            ]
    return out


_TRAINER_MAY = {"name", "env", "env_from", "volume_mounts"}
