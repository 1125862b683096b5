"""Every t5scale task and mixture by name: pretraining (`tasks`) and fine-tuning (`finetune_tasks`), registered on
first use; and copies of any of them with another vocabulary.

    task = get_task_or_mixture("glue_v002_proportional")
    name = copy_with_vocabulary("glue_stsb_v002", vocab.embedded_vocabulary(), "_offline")
"""

from __future__ import annotations

import dataclasses

import seqio

from t5scale.data import finetune_tasks, tasks


def register_all() -> None:
    tasks.register_tasks()
    finetune_tasks.register_finetune_tasks()


def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
    """A registered seqio task or mixture by name; an unknown name lists the registered ones."""
    register_all()
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    if name in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(name)
    known = sorted([*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names()])
    raise ValueError(f"Unknown task or mixture {name!r}. Registered: {', '.join(known)}.")


def copy_with_vocabulary(name: str, vocabulary: seqio.Vocabulary, suffix: str) -> str:
    """Registers `name + suffix`: the task or mixture `name` (a mixture's subtasks too, each renamed with the
    same suffix) with the same source, preprocessors, postprocessor, metrics and rates, but `vocabulary` for
    every feature. Returns the new name; a name already registered is returned as it is.
    """
    new_name = name + suffix
    if new_name in seqio.TaskRegistry.names() or new_name in seqio.MixtureRegistry.names():
        return new_name
    provider = get_task_or_mixture(name)
    if isinstance(provider, seqio.Mixture):
        rates = [(copy_with_vocabulary(sub, vocabulary, suffix), rate)
                 for sub, rate in provider.rate_per_task_name.items()]
        seqio.MixtureRegistry.add(new_name, rates)
    else:
        features = {k: dataclasses.replace(f, vocabulary=vocabulary) for k, f in provider.output_features.items()}
        seqio.TaskRegistry.add_provider(new_name, provider.replace(name=new_name, output_features=features))
    return new_name
