"""Per-dataset training presets: defaults on top of the released recipe; explicit flags win.

Dataset folders follow the authors' layout ``datasets/<name>/{train,test}/{input,target}``.
The released code selected its best model on the test set; here ``val_dir`` points at the
test split only because these benchmarks have no validation split: use your own to be strict.
"""
from __future__ import annotations

from typing import Any

DEMO_DATA_ROOT = "results/demo/data"  # where train.py/test.py build the synthetic demo set

TINY_NETWORK = dict(arch="vlifnet", dim=16, en_num_blocks=[1, 1, 2, 2], de_num_blocks=[1, 1, 1, 1])

PRESETS: dict[str, dict[str, Any]] = {
    "rain200l": dict(train_dir="datasets/Rain200L/train", val_dir="datasets/Rain200L/test",
                     model_save_dir="checkpoints/rain200l", use_refinement=True),
    "rain200h": dict(train_dir="datasets/Rain200H/train", val_dir="datasets/Rain200H/test",
                     model_save_dir="checkpoints/rain200h", use_refinement=False),
    "rain1200": dict(train_dir="datasets/Rain1200/train", val_dir="datasets/Rain1200/test",
                     model_save_dir="checkpoints/rain1200", use_refinement=False),
    # The committed demo weights (pretrained_models/README.md): a tiny VLIFNet trained on the
    # synthetic rain of data/rain.py. Not the released recipe: small patches and batches, a
    # higher learning rate without warm-up, a squared-error loss (what PSNR scores) and flips,
    # validation every 10 epochs on the demo set's validation split (never its test split),
    # which picks best.pth. Without --train_dir / --val_dir the demo set is built under
    # DEMO_DATA_ROOT.
    "demo": dict(TINY_NETWORK, train_dir=None, val_dir=None, model_save_dir="results/demo/checkpoints",
                 patch_size_train=48, batch_size=8, num_epochs=150, lr=2e-3, min_lr=1e-5,
                 warmup_epochs=0, loss="mse", flips=True, num_workers=0, val_epochs=10),
}
