
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.oversight.judge import (
    Judge,
    JudgeConfig,
    encode,
    judge_logits,
    load_images,
    load_judge,
    random_reveals,
    save_judge,
    train_judge,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_encode_by_hand():
    img = torch.tensor([[[0.0, 0.5], [1.0, 0.0]]])  # one 2×2 image
    mask = torch.tensor([[[True, True], [False, False]]])  # reveals a zero pixel and 0.5
    x = encode(img, mask)
    assert x.shape == (1, 2, 2, 2)
    assert x[0, 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]  # mask plane
    assert x[0, 1].tolist() == [[0.0, 0.5], [0.0, 0.0]]  # values plane: hidden 1.0 stays 0


def test_random_reveals_only_nonzero_and_k():
    img = torch.zeros(50, 4, 4)
    img[:, 0, :] = 0.3
    img[:, 2, 1:3] = 1.0  # 6 nonzero pixels per image
    m = random_reveals(img, 3, torch.Generator().manual_seed(0))
    assert (m.sum((1, 2)) == 3).all() and not (m & (img == 0)).any()
    assert len({tuple(r.flatten().tolist()) for r in m}) > 5  # different subsets per image
    assert (random_reveals(img, 10, torch.Generator().manual_seed(0)).sum((1, 2)) == 6).all()  # fewer than k: all


def test_judge_shapes_any_size():
    for h, w in ((28, 28), (8, 8)):
        j = Judge(h, w)
        assert judge_logits(j, torch.zeros(3, 2, h, w)).shape == (3, 10)
    with pytest.raises(SuperalignError):
        judge_logits(Judge(8, 8), torch.zeros(3, 1, 8, 8))


def test_judge_beats_chance_on_digits_deterministic_and_roundtrips(tmp_path):
    cfg = JudgeConfig(k=6, dataset="digits", epochs=4, lr=1e-3, batch_size=64, seed=3)
    split = load_images("digits")
    assert split.name == "digits" and split.train.x.shape[1:] == (8, 8) and float(split.train.x.max()) == 1.0
    fit = train_judge(cfg, split)
    assert fit.test_acc > 0.2, fit  # chance is 0.1
    fit2 = train_judge(cfg, split)
    assert fit2.losses == fit.losses  # deterministic given the seed
    save_judge(fit.judge, tmp_path / "j", cfg)
    j2, info = load_judge(tmp_path / "j")
    assert info["train"]["k"] == 6 and (info["height"], info["width"]) == (8, 8)
    x = encode(split.test.x[:16], random_reveals(split.test.x[:16], 6, torch.Generator().manual_seed(0)))
    assert torch.equal(judge_logits(j2, x), judge_logits(fit.judge, x))
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in (tmp_path / "j").iterdir())


def test_bad_inputs_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(SuperalignError, match="k must be"):
        JudgeConfig(k=0)
    with pytest.raises(SuperalignError, match="unknown dataset"):
        JudgeConfig(dataset="cifar")
    with pytest.raises(SuperalignError, match="MNIST file not found") as e:
        load_images("auto", str(tmp_path / "nope.npz"))
    assert "\n" not in str(e.value) and ";" in str(e.value)  # problem; fix
    monkeypatch.delenv("SUPERALIGN_DATA", raising=False)
    with pytest.raises(SuperalignError, match="MNIST not found"):
        load_images("mnist")
    assert load_images("auto").name == "digits"  # offline fallback
    with pytest.raises(SuperalignError, match="no judge checkpoint"):
        load_judge(tmp_path)


def test_mnist_file_if_present():
    import os
    from pathlib import Path
    root = Path(os.environ.get("SUPERALIGN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (root / "mnist" / "mnist.npz").exists():
        pytest.skip("shared MNIST not found (set SUPERALIGN_DATA)")
    s = load_images("mnist", str(root / "mnist" / "mnist.npz"))
    assert s.train.x.shape == (60000, 28, 28) and s.test.y.shape == (10000,) and float(s.train.x.max()) == 1.0


def test_device_option():
    with pytest.raises(SuperalignError, match="unknown device"):
        JudgeConfig(device="tpu")
    with pytest.raises(SuperalignError, match="--dtype"):
        JudgeConfig(dtype="fp8")
    assert (JudgeConfig().device, JudgeConfig().dtype) == ("auto", "auto")  # every job's defaults (JobBase)
    from superalign.oversight.judge import resolve_device  # the shared one (superalign.models.placement)
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SuperalignError, match="no CUDA GPU"):
            resolve_device("cuda")
