"""Any registered task or mixture with another vocabulary, chosen at run time.

seqio fixes a task's vocabulary when the task is registered. lmlab's tasks
register with their own vocabularies (the embedded 8k SentencePiece, bytes),
but a run that starts from a released checkpoint must read the same text
with that checkpoint's tokenizer. ``with_vocabulary`` registers (once) a copy
of the task whose every feature uses the given vocabulary, named
``<task>#<vocabulary name>``, and returns that name; mixtures are copied
member by member with the same rates. Everything else (source, preprocessors,
metrics) is shared, so pretraining objectives, GLUE tasks and file tasks all
follow the vocabulary from config (``DataConfig.vocabulary``,
``FinetuneConfig.vocabulary``).
"""

from __future__ import annotations

import re

import seqio

SEPARATOR = "#"


def _variant_name(name: str, vocabulary_name: str) -> str:
  base = name.split(SEPARATOR, 1)[0]
  safe = re.sub(r"[^\w.:]", "_", vocabulary_name)
  return f"{base}{SEPARATOR}{safe}"


def _copy_task(task: seqio.Task, name: str, vocabulary: seqio.Vocabulary) -> None:
  features = {key: seqio.Feature(vocabulary, add_eos=f.add_eos, required=f.required,
                                 dtype=f.dtype, rank=f.rank)
              for key, f in task.output_features.items()}
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add_provider(name, task.replace(name=name, output_features=features))


def with_vocabulary(name: str, vocabulary: seqio.Vocabulary, vocabulary_name: str) -> str:
  """The name of a copy of task (or mixture) ``name`` that tokenizes with ``vocabulary``.

  Args:
    name: A registered seqio task or mixture.
    vocabulary: The vocabulary every feature of the copy uses.
    vocabulary_name: A short, stable name of ``vocabulary``
      (``vocabularies.vocabulary_name``); it names the copy, so one
      vocabulary gives one copy however often this is called.

  Raises:
    ValueError: ``name`` is not registered.
  """
  provider = seqio.get_mixture_or_task(name)
  variant = _variant_name(name, vocabulary_name)
  if isinstance(provider, seqio.Mixture):
    members = [(with_vocabulary(task.name, vocabulary, vocabulary_name), provider.get_rate(task))
               for task in provider.tasks]
    if variant in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(variant)
    seqio.MixtureRegistry.add(variant, members)
    return variant
  if _uses(provider, vocabulary):
    return name
  if variant not in seqio.TaskRegistry.names() or not _uses(seqio.get_mixture_or_task(variant),
                                                            vocabulary):
    _copy_task(provider, variant, vocabulary)
  return variant


def _uses(task: seqio.Task, vocabulary: seqio.Vocabulary) -> bool:
  """Whether every feature of ``task`` already uses this very vocabulary object."""
  return all(f.vocabulary is vocabulary for f in task.output_features.values())
