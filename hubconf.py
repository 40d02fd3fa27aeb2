"""torch.hub entry points: the network in two lines, without installing this package.

    model = torch.hub.load("path/to/alexnet", "alexnet2012", source="local", pretrained="runs/x/best.pt")
    model = torch.hub.load("path/to/alexnet", "alexnet_owt", source="local", pretrained=True)

A GitHub "owner/repo[:ref]" in place of the folder, without source="local", downloads the repository.

`pretrained` is any file `--weights` reads (one of our checkpoints, its `alexnet export` as
.safetensors, a state dict .pth or .safetensors, torchvision's reference checkpoints; read by
alexnet.weights.read, every tensor must fit), or, for alexnet_owt only, True / "torchvision" for
torchvision's published ImageNet weights (downloaded through torchvision's weights API). Without
it the network is freshly initialised, as `alexnet train` would start it. Other keywords are
alexnet.model.build's options (num_classes, norm, dropout, width, ...); with `pretrained` they go
over the file's settings, and `num_classes` must be the file's.

The model is returned in eval mode when it is pretrained (train mode otherwise), and takes
mean-subtracted images: (B, 3, C, C) -> (B, classes) logits. The preprocessing the weights expect
(sizes, mean image or mean/std, class names) is in the file: `alexnet.inference.load(path)` gives
the network with it.
"""
# torch.hub checks these import before calling an entry point: alexnet.model needs yaml (config),
# the readers numpy and safetensors, alexnet.inference PIL
dependencies = ["torch", "torchvision", "numpy", "yaml", "PIL", "safetensors"]


def alexnet2012(pretrained=None, **options):
    """The paper's two-tower network (§3, Fig. 2); 60,965,224 parameters with 1000 classes.
    pretrained: a checkpoint or weights file of an alexnet2012 (see the module docstring)."""
    return _network("alexnet2012", pretrained, options)


def alexnet_owt(pretrained=None, **options):
    """torchvision's single-tower AlexNet ("One weird trick"); 61,100,840 parameters with 1000
    classes. pretrained: a checkpoint or weights file of one, or True / "torchvision" for
    torchvision's ImageNet weights."""
    return _network("alexnet_owt", pretrained, options)


def _network(name: str, pretrained, options: dict):
    """Build `name`, from `pretrained`'s weights when given. Raises alexnet.weights.WeightsError
    (a ValueError) for weights that are not of `name`, do not fit, or cannot be read."""
    from alexnet import inference, model, weights

    if pretrained is None or pretrained is False:
        return model.build(name, **options)
    if pretrained is True or pretrained == "torchvision":
        if name != "alexnet_owt":
            raise weights.WeightsError(f"{name} has no published weights: pass pretrained=PATH, a checkpoint of "
                                       f"alexnet train or its safetensors export (torchvision's are alexnet_owt's)")
        pretrained = "torchvision"
    src = weights.read(str(pretrained))
    held = (src.model or {}).get("name")
    if held != name:
        raise weights.WeightsError(f"{src.origin} holds {held or 'no AlexNet we know'}'s weights, not {name}'s"
                                   + (f": torch.hub.load(..., {held!r}, pretrained=...)" if held else ""))
    n = options.pop("num_classes", src.num_classes)
    if n != src.num_classes:
        raise weights.WeightsError(f"{src.origin} has {src.num_classes} classes, not num_classes={n}: leave "
                                   f"num_classes out, or fine-tune with alexnet train --init {src.origin}")
    return inference.model_from_source(src, **options)
