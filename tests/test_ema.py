import pytest
import torch
import torch.nn as nn

from spectralar.models.config import preset
from spectralar.models.ema import EMA
from spectralar.models.tokenizer import SpectralTokenizer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("stat", torch.zeros(2))


def test_update_is_the_exponential_average():
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.9)
    w0 = net.lin.weight.detach().clone()
    want = w0.clone()
    for step in range(1, 4):
        with torch.no_grad():
            net.lin.weight.add_(1.0)
            net.count += 1
            net.stat.fill_(step)
        ema.update(net)
        want = 0.9 * want + 0.1 * net.lin.weight.detach()
    torch.testing.assert_close(ema.state_dict()["lin.weight"], want)
    assert ema.state_dict()["count"].item() == 3 and ema.state_dict()["stat"].tolist() == [3.0, 3.0]  # copied
    assert ema.state_dict()["count"].dtype == torch.long
    assert not torch.equal(want, net.lin.weight)


def test_swap_and_copy_to():
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.lin.weight.add_(2.0)
    ema.update(net)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    averaged = {k: v.clone() for k, v in ema.state_dict().items()}
    param = net.lin.weight
    ema.swap(net)
    assert net.lin.weight is param  # in place: optimizer references stay valid
    assert all(torch.equal(net.state_dict()[k], averaged[k]) for k in averaged)
    ema.swap(net)
    assert all(torch.equal(net.state_dict()[k], trained[k]) for k in trained)
    assert all(torch.equal(ema.state_dict()[k], averaged[k]) for k in averaged)
    ema.copy_to(net)
    assert all(torch.equal(net.state_dict()[k], averaged[k]) for k in averaged)


def test_state_dict_round_trip_and_loads_into_the_model():
    """A checkpoint stores the EMA as a model state dict: it loads into the model (and into a fresh EMA, exactly)."""
    torch.manual_seed(0)
    tok = SpectralTokenizer(preset("tokenizer", "micro"))
    ema = EMA(tok, decay=0.99)
    with torch.no_grad():
        for p in tok.parameters():
            p.add_(torch.randn_like(p))
    ema.update(tok)
    sd = ema.state_dict()
    assert sd.keys() == tok.state_dict().keys()
    fresh = SpectralTokenizer(preset("tokenizer", "micro"))
    fresh.load_state_dict(sd)
    other = EMA(fresh, decay=0.99)
    other.load_state_dict(sd)
    assert all(torch.equal(other.state_dict()[k], sd[k]) for k in sd)
    assert all(t.device == tok.state_dict()[k].device for k, t in sd.items())
    with pytest.raises(ValueError, match="different entries"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "to_pixels.bias"})
    with pytest.raises(ValueError, match="different entries"):
        ema.update(Net())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, float("nan")])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        EMA(Net(), decay)
