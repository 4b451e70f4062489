"""Kubernetes core types that a FineTuneJob passes through to its pods.

Only the fields the pods use are modelled, with their upstream names, so the
CRD stays structural (no preserve-unknown-fields) and `kubectl explain` works.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel

NAME_MAX = 253
LIST_MAX = 64


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement: a key, an operator and values."""

    key: str = Field(max_length=NAME_MAX, description="The label key the selector applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] | None = Field(
        default=None,
        max_length=LIST_MAX,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )


class LabelSelector(ApiModel):
    """A label query over a set of resources."""

    match_labels: dict[str, str] | None = Field(
        default=None, description="Labels that must all match exactly."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=LIST_MAX, description="Requirements that must all hold."
    )


class NodeSelectorRequirement(ApiModel):
    """A node selector requirement: a key, an operator and values."""

    key: str = Field(max_length=NAME_MAX, description="The node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="How the key relates to the values: In, NotIn, Exists, DoesNotExist, Gt, Lt."
    )
    values: list[str] | None = Field(
        default=None, max_length=LIST_MAX, description="Values the operator compares against."
    )


class NodeSelectorTerm(ApiModel):
    """Requirements that a node must all meet."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=LIST_MAX, description="Requirements on node labels."
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=LIST_MAX, description="Requirements on node fields."
    )


class NodeSelector(ApiModel):
    """A node matches when it meets any one of the terms."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        max_length=LIST_MAX, description="Terms, of which a node must meet at least one."
    )


class PreferredSchedulingTerm(ApiModel):
    """A weighted node preference."""

    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1 to 100.")
    preference: NodeSelectorTerm = Field(description="The node selector term to prefer.")


class NodeAffinity(ApiModel):
    """Which nodes the training pods may or prefer to run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes a pod must be scheduled onto."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = (
        Field(default=None, max_length=LIST_MAX, description="Nodes a pod should preferably use.")
    )


class PodAffinityTerm(ApiModel):
    """Pods to be (or not be) co-located with, within a topology domain."""

    label_selector: LabelSelector | None = Field(
        default=None, description="The pods this term refers to."
    )
    namespaces: list[str] | None = Field(
        default=None, max_length=LIST_MAX, description="Namespaces the label selector applies to."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Selects the namespaces the label selector applies to."
    )
    topology_key: str = Field(
        max_length=NAME_MAX,
        description="Node label that defines a topology domain, e.g. kubernetes.io/hostname.",
    )


class WeightedPodAffinityTerm(ApiModel):
    """A weighted pod (anti-)affinity preference."""

    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1 to 100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The pod affinity term.")


class PodAffinity(ApiModel):
    """Pod (anti-)affinity rules."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=LIST_MAX, description="Rules a pod must satisfy."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=LIST_MAX, description="Rules a pod should satisfy.")
    )


class Affinity(ApiModel):
    """Affinity rules copied onto every training pod."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")


class Toleration(ApiModel):
    """A toleration copied onto every training pod (for tainted GPU nodes)."""

    key: str | None = Field(
        default=None, max_length=NAME_MAX, description="The taint key; empty matches all keys."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(
        default=None, max_length=NAME_MAX, description="The taint value for Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint."
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the job's namespace."""

    name: str = Field(max_length=NAME_MAX, description="Name of the object.")
