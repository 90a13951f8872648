"""Studies that regenerate a table of the MSBReg supplement with every run, figure and table in one command:
supplementary Table 4 on Fashion-MNIST under each reading of the losses (``python -m msbreg.study.table4``).
"""
