"""Random weights for a timm/torchvision network that behave like trained ones: He-scaled
convolutions and non-trivial BatchNorm statistics (means and shifts around 0, variances in
[0.5, 1.5), scales around 1), drawn from one seeded generator in state-dict order."""

import torch


def randomise(model, seed=0, spread=0.1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean") or name.endswith(".bias"):
                tensor.copy_(spread * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith(".weight") and tensor.dim() == 1:
                tensor.copy_(1.0 + spread * torch.randn(tensor.shape, generator=generator))
            elif name.endswith(".weight"):
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return model.eval()
