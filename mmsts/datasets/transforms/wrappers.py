"""Transform wrappers for semi-supervised learning."""
import copy
from typing import Dict, List, Optional, Sequence

from mmcv.transforms import BaseTransform, Compose
from mmpretrain.registry import TRANSFORMS


@TRANSFORMS.register_module()
class MultiBranch(BaseTransform):
    """Run several pipelines on copies of one sample, one per branch.

    Each branch pipeline gets its own deep copy of the input ``results`` and
    must end with a packing transform (``PackInputs``), so that its output
    has ``'inputs'`` and ``'data_samples'``. Branches named in
    ``branch_field`` but given no pipeline are ``None``, so that samples of
    different sources (labeled / unlabeled) collate into the same structure.

    For FixMatch, labeled samples fill ``sup`` and unlabeled samples fill
    ``unsup_weak`` and ``unsup_strong`` from the same image::

        branch_field = ['sup', 'unsup_weak', 'unsup_strong']
        labeled_pipeline = [
            dict(type='MultiBranch', branch_field=branch_field,
                 sup=weak_pipeline),
        ]
        unlabeled_pipeline = [
            dict(type='MultiBranch', branch_field=branch_field,
                 unsup_weak=weak_pipeline, unsup_strong=strong_pipeline),
        ]

    The output of a transform is
    ``{'inputs': {branch: Tensor | None}, 'data_samples':
    {branch: DataSample | None}}``, with the branches in the order of
    ``branch_field``.

    Args:
        branch_field (Sequence[str]): Names of all the branches.
        **branch_pipelines (list[dict]): The pipeline of each branch that
            this sample fills, keyed by branch name.
    """

    def __init__(self, branch_field: Sequence[str],
                 **branch_pipelines: List[dict]) -> None:
        if (isinstance(branch_field, str)
                or not isinstance(branch_field, Sequence)
                or not all(isinstance(name, str) for name in branch_field)):
            raise TypeError('`branch_field` must be a list of branch names, '
                            f'but got {branch_field!r}.')
        if len(set(branch_field)) != len(branch_field):
            raise ValueError('`branch_field` has repeated names: '
                             f'{list(branch_field)!r}.')
        unknown = [
            name for name in branch_pipelines if name not in branch_field
        ]
        if unknown:
            raise ValueError(
                f'MultiBranch got pipelines for {unknown}, which are not in '
                f'`branch_field`={list(branch_field)!r}.')
        if not branch_pipelines:
            raise ValueError('MultiBranch needs the pipeline of at least one '
                             f'branch of {list(branch_field)!r}.')
        for name, pipeline in branch_pipelines.items():
            if not isinstance(pipeline, (list, tuple)):
                raise TypeError(f'The pipeline of branch {name!r} must be a '
                                f'list of transforms, but got {pipeline!r}.')
        self.branch_field = list(branch_field)
        self.branch_pipelines: Dict[str, Compose] = {
            name:
            Compose([
                TRANSFORMS.build(t) if isinstance(t, dict) else t
                for t in pipeline
            ])
            for name, pipeline in branch_pipelines.items()
        }

    def transform(self, results: dict) -> Optional[dict]:
        """Apply every branch pipeline to a copy of ``results``.

        Args:
            results (dict): The sample, e.g. ``{'img': ndarray, ...}``.

        Returns:
            dict | None: ``{'inputs': {...}, 'data_samples': {...}}``, or
            None if a branch pipeline dropped the sample.
        """
        inputs = dict.fromkeys(self.branch_field)
        data_samples = dict.fromkeys(self.branch_field)
        for name, pipeline in self.branch_pipelines.items():
            packed = pipeline(copy.deepcopy(results))
            if packed is None:
                return None
            if 'inputs' not in packed or 'data_samples' not in packed:
                raise KeyError(
                    f'The pipeline of branch {name!r} must end with a '
                    "packing transform (e.g. PackInputs) that outputs "
                    f"'inputs' and 'data_samples', got keys {list(packed)}.")
            inputs[name] = packed['inputs']
            data_samples[name] = packed['data_samples']
        return dict(inputs=inputs, data_samples=data_samples)

    def __repr__(self) -> str:
        body = ''.join(f'\n    {name}={pipeline!r},'
                       for name, pipeline in self.branch_pipelines.items())
        return (f'{self.__class__.__name__}(branch_field='
                f'{self.branch_field!r},{body}\n)')
