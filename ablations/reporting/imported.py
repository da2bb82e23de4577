"""The role of excitation (paper §7.2, Figs. 6-7) on an imported network and an image folder
(`senet-ablate excitation --weights W --data imagefolder:DIR`): the paper's blocks and, where the folder has them,
the paper's classes (goldfish, pug, plane, cliff), beside the mean over all the folder's classes.

It feeds `excitation.analyze` and `excitation.write`, the same statistics and figures as for a trained trial.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from ablations.data.imagenet import PAPER_CLASSES, EvalFolder, FolderBatches, class_name, synsets
from ablations.errors import SenetError
from ablations.reporting.evaluate import Subject
from ablations.reporting.excitation import PER_CLASS, analyze, write
from senet_core import se_blocks

# The blocks of the paper's Figs. 6-7 in SE-ResNet-50: the last block of stages 2-4 and the three of stage 5.
PAPER_BLOCKS = ("SE_2_3", "SE_3_4", "SE_4_6", "SE_5_1", "SE_5_2", "SE_5_3")
LAST_STAGE_BLOCKS = 3


def paper_blocks(model: torch.nn.Module) -> tuple[list[str], str | None]:
    """The blocks to draw, and a note when they are not the paper's names.

    Other networks get the blocks in the same roles: the last SE block of every stage but the last, and the first
    three of the last stage (SE-ResNet-101: SE_4_23 where SE-ResNet-50 has SE_4_6).
    """
    blocks = se_blocks(model)
    if not blocks:
        raise SenetError("excitation: the model has no SE blocks (se.enabled is false)")
    stages = sorted({b.stage for b in blocks.values()})
    chosen: list[str] = []
    for stage in stages:
        names = [n for n, b in blocks.items() if b.stage == stage]
        chosen += names[-1:] if stage != stages[-1] else names[:LAST_STAGE_BLOCKS]
    if tuple(chosen) == PAPER_BLOCKS:
        return chosen, None
    return chosen, (
        f"the paper's blocks ({', '.join(PAPER_BLOCKS)}) are SE-ResNet-50's; this network's blocks in the same roles "
        f"(last of each stage, first {LAST_STAGE_BLOCKS} of the last) are {', '.join(chosen)}"
    )


def _class_index(token: str, folder: EvalFolder) -> int:
    """A class given as an index, a WordNet id, the paper's name or a first lemma (ImageNet), or a folder name."""
    if token.isdigit():
        return int(token)
    if folder.imagenet:
        wnid = PAPER_CLASSES.get(token, token)
        if re.fullmatch(r"n\d{8}", wnid) and wnid in synsets():
            return synsets().index(wnid)
        named = [i for i, w in enumerate(synsets()) if class_name(w).lower() == token.lower()]
        if named:
            return named[0]
    elif token in folder.folders:
        return folder.targets[folder.folders.index(token)]
    raise SenetError(f"--classes: {token!r} is not a class of the model (an index, a WordNet id or a class name)")


def pick_classes(tokens: Sequence[str] | None, folder: EvalFolder) -> tuple[list[int], str | None]:
    """The classes to draw, as model indices, and a note when the paper's classes are not in the folder.

    Default: the paper's four classes that the folder holds; none of them, the folder's first four classes.
    """
    present = list(dict.fromkeys(folder.targets))
    if tokens:
        chosen = list(dict.fromkeys(_class_index(t, folder) for t in tokens))
        absent = [k for k in chosen if k not in present]
        if absent:
            raise SenetError(f"--classes: {folder.name(absent[0])} ({absent[0]}) has no folder in {folder.root}")
        return chosen, None
    if folder.imagenet:
        paper = {name: synsets().index(wnid) for name, wnid in PAPER_CLASSES.items()}
        chosen = [k for k in paper.values() if k in present]
        missing = [name for name, k in paper.items() if k not in present]
        if not missing:
            return chosen, None
        if chosen:
            return chosen, f"the folder lacks the paper's {', '.join(missing)}; drawn: the others"
    return present[:4], f"the folder has none of the paper's classes ({', '.join(PAPER_CLASSES)}); drawn: its first 4"


def first_per_class(folder: EvalFolder, per_class: int) -> Subset:
    """The folder's first `per_class` images of every class (all the analysis uses), so the probe holds no more."""
    seen: dict[int, int] = {}
    keep = []
    for i, (_, label) in enumerate(folder.dataset.samples):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return Subset(folder.dataset, keep)


@dataclass
class ImportedExcitation:
    """What `excitation_imported` drew: the files, the blocks and classes (model indices, names), and notes."""

    paths: list[Path]
    blocks: list[str]
    classes: list[int]
    names: list[str]
    notes: list[str]


def excitation_imported(
    subject: Subject,
    folder: EvalFolder,
    out: Path,
    *,
    classes: Sequence[str] | None = None,
    per_class: int = PER_CLASS,
    batch_size: int = 64,
    workers: int = 4,
) -> ImportedExcitation:
    """Figs. 6-7 and the specificity plot of an imported network on `folder`.

    Args:
        subject: the network (imported weights).
        folder: images in one folder per class; ImageNet WordNet-id folders are mapped to the 1000 classes.
        out: where the figures and the CSV go.
        classes: classes to draw (indices, WordNet ids, names); None = the paper's where the folder has them.
        per_class: images per class, the first ones of each folder (the paper: 50).
        batch_size, workers: images per forward pass, image decoding processes.
    """
    if per_class < 1:
        raise SenetError(f"--per-class: {per_class} is not allowed; allowed: an integer >= 1")
    blocks, block_note = paper_blocks(subject.model)
    chosen, class_note = pick_classes(classes, folder)
    batches = FolderBatches(first_per_class(folder, per_class), folder.targets, batch_size, workers)
    ex = analyze(subject.model, batches, chosen, per_class, blocks=blocks)
    names = [folder.name(k) for k in chosen]
    paths = write(ex, out, subject.label, names=names)
    notes = [n for n in (block_note, class_note) if n] + subject.notes
    return ImportedExcitation(paths, blocks, chosen, names, notes)
