from .multi_source_sampler import MultiSourceBatchSampler, MultiSourceSampler

__all__ = ['MultiSourceBatchSampler', 'MultiSourceSampler']
