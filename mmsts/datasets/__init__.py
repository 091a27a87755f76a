from .digits import Digits, digits_split_indices

__all__ = ['Digits', 'digits_split_indices']
