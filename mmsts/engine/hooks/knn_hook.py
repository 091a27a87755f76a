"""Watch the teacher and the student with a weighted k-NN classifier."""
import contextlib
import copy
import logging
import math
import random
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import all_gather, get_world_size
from mmengine.hooks import Hook, LoggerHook
from mmengine.logging import print_log
from mmengine.model import BaseAveragedModel, is_model_wrapper
from mmengine.runner import IterBasedTrainLoop, Runner
from mmpretrain.registry import DATASETS, HOOKS
from torch import Tensor

#: Default labels of the backbones, in the order they are logged.
TEACHER, STUDENT = 'teacher', 'student'
#: Where a teacher (an averaged model) keeps its backbone, after
#: ``<teacher>.module``: ``Sequential(backbone, neck)`` (BYOL, MoCo) or a
#: whole classifier (FixMatch).
TEACHER_BACKBONES = ('0', 'backbone')
#: Where a model keeps its student's backbone.
STUDENT_BACKBONES = ('backbone', 'student.backbone')


@torch.no_grad()
def weighted_knn_predict(query: Tensor,
                         bank: Tensor,
                         bank_labels: Tensor,
                         num_classes: int,
                         k: int = 20,
                         temperature: float = 0.07,
                         chunk_size: int = 1024) -> Tensor:
    r"""Weighted k-NN classification on L2-normalised features.

    The monitor of self-supervised learning of Wu et al. (InstDisc, CVPR
    2018), used by DINO and many others: each query takes its ``k`` most
    similar bank features (cosine similarity ``s``, the dot product of
    normalised features); each neighbour votes for its label with weight
    :math:`\exp(s / T)`; the class with the largest total wins (ties go to
    the smallest class index).

    Args:
        query (Tensor): Query features ``(Q, D)``, L2-normalised.
        bank (Tensor): Bank ("memory") features ``(N, D)``, L2-normalised.
        bank_labels (Tensor): Labels of the bank ``(N, )``, in
            ``[0, num_classes)``.
        num_classes (int): Number of classes.
        k (int): Neighbours per query; ``min(k, N)`` are used. Defaults
            to 20.
        temperature (float): Temperature ``T`` of the weights. Defaults to
            0.07.
        chunk_size (int): Queries compared with the bank at once (bounds the
            ``chunk_size x N`` similarity matrix). Defaults to 1024.

    Returns:
        Tensor: The predicted labels ``(Q, )``.
    """
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, query.shape[0], chunk_size):
        sims = query[start:start + chunk_size] @ bank.t()
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        scores = torch.zeros(
            sims.shape[0], num_classes, dtype=weights.dtype,
            device=weights.device)
        scores.scatter_add_(1, bank_labels[top_idx], weights)
        preds.append(scores.argmax(dim=1))
    return torch.cat(preds) if preds else bank_labels.new_empty(0)


def backbone_feature(backbone: nn.Module, inputs: Tensor) -> Tensor:
    """The feature the monitor classifies: the backbone's last output,
    global-average pooled over its spatial dimensions, L2-normalised.

    Args:
        backbone (nn.Module): An mmpretrain backbone (returns a tuple of
            stages) or any module returning a tensor.
        inputs (Tensor): Preprocessed images ``(B, C, H, W)``.

    Returns:
        Tensor: ``(B, D)`` float32 unit vectors.
    """
    out = backbone(inputs)
    if isinstance(out, (tuple, list)):
        out = out[-1]
    if isinstance(out, (tuple, list)):  # e.g. ViT's (patch, cls) pairs
        out = out[-1]
    if out.dim() > 2:
        out = out.flatten(2).mean(dim=2)
    return F.normalize(out.float(), dim=1)


@HOOKS.register_module()
class KNNMonitorHook(Hook):
    """Evaluate the teacher's and the student's backbones with a weighted
    k-NN classifier during training.

    Every ``interval`` epochs (or iterations, ``by_epoch=False``) and at the
    end of training, the hook extracts features of a labelled "memory bank"
    set (``train_dataloader``) and of a query set (``val_dataloader``) with
    each backbone, and classifies every query by its ``k`` nearest bank
    features (cosine similarity, votes weighted by ``exp(s / temperature)``,
    see :func:`weighted_knn_predict`). The feature is the backbone's last
    stage, global-average pooled and L2-normalised. This is the usual k-NN
    monitor of self-supervised learning: it shows the teacher and the
    student side by side without a linear probe.

    By default it finds the student's backbone (``backbone``, or
    ``student.backbone`` in a FixMatch model) and the backbone of the model's
    averaged model, the teacher (BYOL ``target_net.module.0``, MoCo
    ``encoder_k.module.0``, FixMatch ``teacher.module.backbone``).

    The backbones run in eval mode under ``torch.no_grad()``, with the
    model's data preprocessor; their modes are restored afterwards, and
    nothing of the model changes. The global random states (Python, NumPy,
    torch) are given back as they were, so the training that follows is the
    same with or without the hook. Under DDP every rank extracts its shard of
    each set (``DefaultSampler(shuffle=False)`` by default), the features
    are gathered with :func:`mmengine.dist.all_gather` and put back in
    data-set order by their ``sample_idx`` (padding duplicates dropped), so
    the result does not depend on the number of processes; every rank then
    computes the same k-NN.

    Results, top-1 accuracy in % (like mmpretrain's ``accuracy/top1``), go
    to the message hub as ``train/knn/<label>/top1``, e.g.
    ``train/knn/teacher/top1`` and ``train/knn/student/top1``; the hook
    runs at the end of the iteration it evaluates, before ``LoggerHook``, so
    they appear as ``knn/<label>/top1`` in the log line and the
    ``scalars.json`` record (TensorBoard, ...) of that iteration, and in
    every later one until the next evaluation (the latest value, as for the
    learning rate). When ``LoggerHook`` does not log that iteration (its
    ``interval`` does not divide the epoch and ``ignore_last=True``), the
    hook writes the record itself, so every evaluation is in
    ``scalars.json`` at its own step. The history of the evaluations is
    ``runner.message_hub.get_scalar('train/knn/teacher/top1')`` (saved in
    checkpoints). Each evaluation also writes one line to the text log, with
    its duration and the k-NN monitor's share of the training time so far.

    Args:
        train_dataloader (dict): Config of the labelled memory-bank data
            loader, built with :meth:`mmengine.runner.Runner.build_dataloader`;
            use a test pipeline (no augmentation). ``sampler`` defaults to
            ``DefaultSampler(shuffle=False)`` and ``collate_fn`` to
            ``default_collate`` (which mmpretrain's self-supervised data
            preprocessors need).
        val_dataloader (dict): Config of the labelled query data loader,
            likewise.
        interval (int): Epochs (or iterations) between two evaluations.
            Defaults to 1.
        by_epoch (bool): Whether ``interval`` counts epochs (evaluating at
            the last iteration of the epoch; needs an epoch-based training
            loop) or iterations. Defaults to True.
        evaluate_last (bool): Also evaluate at the end of training when it
            is not a multiple of ``interval``. Defaults to True.
        k (int): Neighbours per query. Defaults to 20.
        temperature (float): Temperature of the neighbours' weights.
            Defaults to 0.07.
        backbones (dict[str, str], optional): Label -> dotted attribute name
            of a backbone in the model, e.g. ``dict(teacher=
            'target_net.module.0', student='backbone')``; the labels name the
            logged keys. None finds the teacher and the student (see above).
            Defaults to None.
        max_samples (int, optional): Most images of each set: a larger set
            is subsampled once, evenly spaced over the data set (so every
            class keeps its share in a class-sorted list), which bounds the
            cost of an evaluation. None uses every image. Defaults to None.
        chunk_size (int): Queries compared with the bank at once. Defaults
            to 1024.

    Raises at construction, naming the key and the value: a missing or
    malformed data loader config, or an option out of range. Raises before
    training: a backbone that is not in the model, or a teacher that
    cannot be found without ``backbones``.
    """

    priority = 'NORMAL'

    def __init__(self,
                 train_dataloader: dict,
                 val_dataloader: dict,
                 interval: int = 1,
                 by_epoch: bool = True,
                 evaluate_last: bool = True,
                 k: int = 20,
                 temperature: float = 0.07,
                 backbones: Optional[Dict[str, str]] = None,
                 max_samples: Optional[int] = None,
                 chunk_size: int = 1024) -> None:
        for key, cfg in (('train_dataloader', train_dataloader),
                         ('val_dataloader', val_dataloader)):
            if not isinstance(cfg, dict) or not isinstance(
                    cfg.get('dataset'), dict):
                raise TypeError(
                    f'`{key}` must be a data loader config (a dict with a '
                    f'`dataset` config), but got {cfg!r}')
        _positive_int('interval', interval)
        _positive_int('k', k)
        _positive_int('chunk_size', chunk_size)
        if max_samples is not None:
            _positive_int('max_samples', max_samples)
        if (isinstance(temperature, bool)
                or not isinstance(temperature, (int, float))
                or not math.isfinite(temperature) or temperature <= 0):
            raise ValueError('`temperature` must be a positive number, but '
                             f'got {temperature!r}')
        for key, value in (('by_epoch', by_epoch), ('evaluate_last',
                                                    evaluate_last)):
            if not isinstance(value, bool):
                raise TypeError(f'`{key}` must be a bool, but got {value!r}')
        if backbones is not None:
            if (not isinstance(backbones, dict) or not backbones or not all(
                    isinstance(label, str) and label and '/' not in label
                    and isinstance(name, str) and name
                    for label, name in backbones.items())):
                raise ValueError(
                    '`backbones` must be a non-empty dict of label -> '
                    "attribute name (labels without '/'), e.g. dict(teacher="
                    f"'target_net.module.0', student='backbone'), but got "
                    f'{backbones!r}')
            backbones = dict(backbones)
        self.dataloader_cfgs = dict(
            train=copy.deepcopy(train_dataloader),
            val=copy.deepcopy(val_dataloader))
        self.interval = interval
        self.by_epoch = by_epoch
        self.evaluate_last = evaluate_last
        self.k = k
        self.temperature = float(temperature)
        self.backbone_names = backbones
        self.max_samples = max_samples
        self.chunk_size = chunk_size
        self.dataloaders: Optional[dict] = None
        #: Seconds spent in evaluations so far (this run).
        self.total_time = 0.0
        self._warned_k = False

    # ------------------------------------------------------------------
    # Hook points
    # ------------------------------------------------------------------
    def before_train(self, runner) -> None:
        """Find the backbones and build the data loaders: a wrong name or
        data set fails before the first iteration."""
        self._train_start = time.perf_counter()
        self.total_time = 0.0
        if self.by_epoch and isinstance(runner.train_loop,
                                        IterBasedTrainLoop):
            raise ValueError(
                'KNNMonitorHook: `by_epoch=True`, but the training loop is '
                'iteration-based; set `by_epoch=False` and `interval` in '
                'iterations')
        self.find_backbones(runner)
        self._build_dataloaders(runner)

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        """Evaluate at the last iteration of every ``interval``-th epoch
        (or every ``interval`` iterations) and at the end of training,
        before ``LoggerHook`` logs that iteration."""
        if self.by_epoch:
            due = self.end_of_epoch(runner.train_dataloader, batch_idx) and (
                (runner.epoch + 1) % self.interval == 0 or
                (self.evaluate_last and self.is_last_train_epoch(runner)))
        else:
            due = self.every_n_train_iters(runner, self.interval) or (
                self.evaluate_last and self.is_last_train_iter(runner))
        if due:
            self._evaluate_and_log(runner, batch_idx)

    # ------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------
    def find_backbones(self, runner) -> Dict[str, str]:
        """The dotted names of the backbones to evaluate, by label.

        Args:
            runner (Runner): The runner (its model may be wrapped).

        Returns:
            dict[str, str]: ``backbones`` if given, else ``teacher`` and
            ``student`` found in the model.
        """
        model = _unwrap(runner.model)
        if self.backbone_names is not None:
            for label, name in self.backbone_names.items():
                module = _get_submodule(model, name)
                if module is None:
                    raise ValueError(
                        f'KNNMonitorHook: `backbones.{label}` names {name!r}'
                        f', which is not a submodule of '
                        f'{type(model).__name__}; its submodules are '
                        f'{[n for n, _ in model.named_children()]}')
            return dict(self.backbone_names)
        teachers = _outermost_averaged_models(model)
        if len(teachers) != 1:
            raise ValueError(
                f'KNNMonitorHook found {len(teachers)} averaged models '
                f'(teachers) {sorted(teachers)} in {type(model).__name__}, '
                'whose submodules are '
                f'{[n for n, _ in model.named_children()]}: name the '
                "backbones, e.g. backbones=dict(teacher='target_net.module."
                "0', student='backbone')")
        teacher_name = next(iter(teachers))
        found = {}
        for label, candidates in (
            (TEACHER, [f'{teacher_name}.module.{b}'
                       for b in TEACHER_BACKBONES]),
            (STUDENT, list(STUDENT_BACKBONES)),
        ):
            for name in candidates:
                if _get_submodule(model, name) is not None:
                    found[label] = name
                    break
            else:
                raise ValueError(
                    f'KNNMonitorHook found no {label} backbone in '
                    f'{type(model).__name__} (looked for {candidates}); '
                    'name the backbones with `backbones`')
        self.backbone_names = found
        return dict(found)

    @torch.no_grad()
    def extract(self, runner) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Extract the features of the memory bank and of the queries with
        every backbone, in eval mode; the modes are restored afterwards.

        Collective under DDP: every rank must call it.

        Args:
            runner (Runner): The runner; its model may be wrapped.

        Returns:
            tuple[dict, dict]: For the bank and for the queries, ``labels``
            ``(N, )`` and, for every backbone label, its L2-normalised
            features ``(N, D)``, gathered from all ranks, in data-set order.
        """
        names = self.find_backbones(runner)
        if self.dataloaders is None:
            self._build_dataloaders(runner)
        model = _unwrap(runner.model)
        backbones = {
            label: model.get_submodule(name)
            for label, name in names.items()
        }
        modes = [(m, m.training) for b in backbones.values()
                 for m in b.modules()]
        try:
            for backbone in backbones.values():
                backbone.eval()
            bank = self._extract(model, backbones, self.dataloaders['train'])
            query = self._extract(model, backbones, self.dataloaders['val'])
        finally:
            for module, mode in modes:
                module.training = mode
        return bank, query

    @torch.no_grad()
    def evaluate(self, runner) -> Dict[str, float]:
        """Run the k-NN evaluation of every backbone now.

        Collective under DDP: every rank must call it.

        Args:
            runner (Runner): The runner; its model may be wrapped.

        Returns:
            dict[str, float]: ``knn/<label>/top1`` (%) of every backbone.
        """
        with _preserved_rng():
            bank, query = self.extract(runner)
        bank_labels, query_labels = bank.pop('labels'), query.pop('labels')
        num_classes = int(torch.cat([bank_labels, query_labels]).max()) + 1
        if self.k > bank_labels.numel() and not self._warned_k:
            print_log(
                f'KNNMonitorHook: k={self.k} is larger than the memory bank '
                f'({bank_labels.numel()} images); using k='
                f'{bank_labels.numel()}',
                logger='current',
                level=logging.WARNING)
            self._warned_k = True
        results = {}
        for label in bank:
            preds = weighted_knn_predict(query[label], bank[label],
                                         bank_labels.to(bank[label].device),
                                         num_classes, self.k,
                                         self.temperature, self.chunk_size)
            correct = (preds.cpu() == query_labels).double().mean()
            results[f'knn/{label}/top1'] = 100.0 * float(correct)
        return results

    def _extract(self, model: nn.Module, backbones: Dict[str, nn.Module],
                 dataloader) -> Dict[str, Tensor]:
        """Features of every backbone and the labels of a whole data set,
        gathered from all ranks, in data-set order."""
        feats: Dict[str, List[Tensor]] = {label: [] for label in backbones}
        labels, indices = [], []
        for data_batch in dataloader:
            data = model.data_preprocessor(data_batch, False)
            inputs, samples = data['inputs'], data['data_samples']
            if not isinstance(inputs, Tensor):
                raise TypeError(
                    'KNNMonitorHook needs batches of single images (a '
                    'PackInputs test pipeline, default_collate), but the '
                    f'data preprocessor gave {type(inputs).__name__} inputs')
            for label, backbone in backbones.items():
                feats[label].append(backbone_feature(backbone, inputs))
            for sample in samples:
                if 'gt_label' not in sample or 'sample_idx' not in sample:
                    raise ValueError(
                        'KNNMonitorHook needs labelled images with their '
                        '`sample_idx` (keep it in PackInputs meta_keys), '
                        f'but a data sample has {sorted(sample.keys())}')
            labels.append(
                torch.cat([s.gt_label.reshape(1) for s in samples]).cpu())
            indices.append(torch.tensor([s.sample_idx for s in samples]))
        local_idx = torch.cat(indices) if indices else torch.zeros(
            0, dtype=torch.long)
        local = dict(
            labels=torch.cat(labels).long()
            if labels else torch.zeros(0, dtype=torch.long))
        for label, chunks in feats.items():
            local[label] = torch.cat(chunks) if chunks else torch.zeros(0, 0)
        return _gather_in_order(local, local_idx)

    def _build_dataloaders(self, runner) -> None:
        self.dataloaders = {}
        for split, cfg in self.dataloader_cfgs.items():
            cfg = copy.deepcopy(cfg)
            cfg.setdefault('sampler', dict(type='DefaultSampler',
                                           shuffle=False))
            cfg.setdefault('collate_fn', dict(type='default_collate'))
            dataset = DATASETS.build(cfg.pop('dataset'))
            if hasattr(dataset, 'full_init'):
                dataset.full_init()
            if self.max_samples is not None and len(
                    dataset) > self.max_samples:
                keep = np.unique(
                    np.linspace(0, len(dataset) - 1,
                                self.max_samples).round().astype(int))
                if hasattr(dataset, 'get_subset_'):
                    dataset.get_subset_(keep.tolist())
                else:
                    dataset = torch.utils.data.Subset(dataset, keep.tolist())
            cfg['dataset'] = dataset
            self.dataloaders[split] = Runner.build_dataloader(
                cfg, seed=runner.seed)

    def _evaluate_and_log(self, runner, batch_idx: int) -> None:
        start = time.perf_counter()
        results = self.evaluate(runner)
        elapsed = time.perf_counter() - start
        self.total_time += elapsed
        for key, value in results.items():
            runner.message_hub.update_scalar(f'train/{key}', value)
        if not _logger_hook_logs(runner, batch_idx):
            # LoggerHook skips this iteration: write its record here.
            prefix = 'train/' if runner.log_processor.log_with_hierarchy \
                else ''
            record = {f'{prefix}{k}': v for k, v in results.items()}
            if self.by_epoch:
                record['epoch'] = runner.epoch + 1
            record['iter'] = runner.iter + 1
            runner.visualizer.add_scalars(
                record, step=runner.iter + 1,
                file_path=_json_log_path(runner))
        sizes = {
            split: len(loader.dataset)
            for split, loader in self.dataloaders.items()
        }
        where = f'iter {runner.iter + 1}'
        if self.by_epoch:
            where = f'epoch {runner.epoch + 1}, {where}'
        values = '  '.join(f'{k}: {v:.2f}' for k, v in results.items())
        train_time = time.perf_counter() - getattr(self, '_train_start',
                                                   start)
        runner.logger.info(
            f'k-NN monitor (k={self.k}, T={self.temperature:g}) after '
            f'{where}: {values}  ({elapsed:.2f} s for {sizes["train"]} bank '
            f'and {sizes["val"]} query images; k-NN monitor '
            f'{100 * self.total_time / max(train_time, 1e-9):.1f} % of the '
            'training time so far)')


# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------
def _positive_int(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'`{key}` must be a positive int, but got {value!r}')


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _get_submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _outermost_averaged_models(
        model: nn.Module) -> Dict[str, BaseAveragedModel]:
    """Every BaseAveragedModel in ``model`` that is not inside another."""
    found: Dict[str, BaseAveragedModel] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseAveragedModel) and not any(
                name.startswith(f'{outer}.') for outer in found):
            found[name] = module
    return found


def _logger_hook_logs(runner, batch_idx: int) -> bool:
    """Whether MMEngine's ``LoggerHook`` writes a record of this training
    iteration (its own condition in ``after_train_iter``)."""
    for hook in runner.hooks:
        if isinstance(hook, LoggerHook):
            return hook.every_n_inner_iters(batch_idx, hook.interval) or (
                hook.end_of_epoch(runner.train_dataloader, batch_idx) and
                (not hook.ignore_last
                 or len(runner.train_dataloader) <= hook.interval))
    return False


@contextlib.contextmanager
def _preserved_rng():
    """Give back the global random states (Python, NumPy, torch) as they
    were: iterating a data loader draws a seed from torch's generator, and a
    pipeline may draw too, which would change the training that follows."""
    states = (random.getstate(), np.random.get_state(),
              torch.get_rng_state())
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda:
            torch.cuda.set_rng_state_all(cuda_states)


def _json_log_path(runner) -> Optional[str]:
    """The extra JSON log LoggerHook writes its records to, if any."""
    for hook in runner.hooks:
        path = getattr(hook, 'json_log_path', None)
        if path:
            return path
    return None


def _gather_in_order(local: Dict[str, Tensor],
                     sample_idx: Tensor) -> Dict[str, Tensor]:
    """Gather per-rank tensors (first dimension: samples) from every rank
    and sort them by ``sample_idx``, keeping one copy of each sample (a
    sampler pads the last shards with duplicates)."""
    if get_world_size() > 1:
        count = torch.tensor([sample_idx.numel()])
        counts = [int(c) for c in all_gather(count)]
        longest = max(counts)

        def gather(tensor: Tensor) -> Tensor:
            padded = tensor.new_zeros((longest, ) + tuple(tensor.shape[1:]))
            padded[:tensor.shape[0]] = tensor
            parts = all_gather(padded)
            return torch.cat([p[:n] for p, n in zip(parts, counts)])

        # Every rank may have no image at all (shape (0, 0)): agree on the
        # feature sizes first.
        for key, tensor in local.items():
            if tensor.dim() == 2:
                width = torch.tensor([tensor.shape[1]])
                widest = max(int(w) for w in all_gather(width))
                if tensor.shape[1] != widest:
                    local[key] = tensor.new_zeros((0, widest))
        sample_idx = gather(sample_idx)
        local = {key: gather(tensor) for key, tensor in local.items()}
    order = torch.argsort(sample_idx, stable=True)
    sorted_idx = sample_idx[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    keep = order[first]
    return {key: tensor[keep.to(tensor.device)]
            for key, tensor in local.items()}
