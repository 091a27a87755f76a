from .multi_branch import MultiBranchDataPreprocessor

__all__ = ['MultiBranchDataPreprocessor']
