"""alexnet: the 2012 ImageNet network of Krizhevsky, Sutskever and Hinton, reproduced end to end.

Modules: model (the network family), config (typed configuration and presets), cli (the `alexnet`
command), info (layer tables and environment: alexnet.layers, alexnet.envinfo). See README.md.
"""
__version__ = "0.1.0"
