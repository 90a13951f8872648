"""Barlow Twins (Zbontar et al. 2021): the worked example of docs/adding_a_method.md."""
