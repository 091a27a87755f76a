from .wrappers import MultiBranch

__all__ = ['MultiBranch']
