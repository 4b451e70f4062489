"""The contract between the FineTuneJob operator, `ftctl` and the trainer.

One small package that all three import and that imports none of them:

- `types` (with `base`, `k8s_types`, `schema`): the FineTuneJob API models, the
  one source of truth; `crd` generates the CustomResourceDefinition from them
  and `validation` words their errors;
- `names`: the API group, kinds, labels, conditions, reasons, pod names, ports;
- `env`: `TrainerEnv`, the training pod's environment, written and read only there;
- `checkpoints`: the checkpoint layout under spec.checkpoints.uri;
- `metrics`: the trainer's Prometheus series names;
- `exits`: exit codes and the termination-message format.
"""
