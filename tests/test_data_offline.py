"""Without network: dataset downloads and pretrained weights fail at once with one line saying where the files go.

The real download code of torchvision, torch.hub and huggingface_hub runs; only the lowest network call is
replaced by one that fails as it does offline, so these tests behave the same with or without network.
``time.sleep`` fails the test, so no code path may wait and retry.
"""

import time
import urllib.request
from urllib.error import URLError

import pytest
import torch

from common.backbones import BackboneConfig, build_backbone
from common.data import DataConfig, build_dataset, fashion_mnist
from common.errors import ConfigError, DataError


def offline(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known")


@pytest.fixture(autouse=True)
def no_network_and_no_waiting(monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", offline)  # torchvision.datasets' downloads
    monkeypatch.setattr(torch.hub, "urlopen", offline)  # torch.hub's (torchvision and timm weights by URL)

    def no_sleep(seconds):
        raise AssertionError(f"something waited {seconds} s to retry")

    monkeypatch.setattr(time, "sleep", no_sleep)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("name", "folder", "files"), [
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar100", "cifar-100-python", "the python-pickle files train"),
    ("stl10", "stl10_binary", "train_X.bin"),
    ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte"),  # torchvision tries two mirrors
])
def test_download_without_network_is_one_line_naming_the_files_and_folder(tmp_path, monkeypatch, name, folder,
                                                                           files):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIRS", ())
    with pytest.raises(DataError) as error:
        build_dataset(DataConfig(name=name, root=str(tmp_path), download=True), "train")
    message = one_line(error)
    assert message.startswith(f"cannot download dataset '{name}' (")
    assert "Name or service not known" in message and files in message and str(tmp_path / folder) in message


def test_torchvision_weights_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DataError) as error:
        build_backbone(BackboneConfig(name="resnet18", pretrained=True))
    message = one_line(error)
    assert "pretrained weights of backbone 'resnet18'" in message and "backbone.pretrained=false" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf"


def test_timm_weights_without_network_fail_on_the_first_request(empty_hub_cache, monkeypatch):
    import huggingface_hub

    requests = []

    def unreachable(url, **kwargs):
        requests.append(url)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    with pytest.raises(DataError) as error:
        build_backbone(BackboneConfig(name="timm:resnet18", pretrained=True))
    message = one_line(error)
    assert len(requests) == 1 and "timm/resnet18.a1_in1k" in requests[0]
    assert f"{empty_hub_cache} (repository timm/resnet18.a1_in1k)" in message and "Name or service" in message


def test_timm_weights_with_hf_hub_offline_fail_without_a_request(empty_hub_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)  # must not be called
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set and they are not cached") as error:
        build_backbone(BackboneConfig(name="timm:resnet18.a1_in1k", pretrained=True))
    assert str(empty_hub_cache) in one_line(error)


def test_unknown_timm_and_torchvision_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"'timm:resnet_does_not_exist': 'resnet_does_not_exist' is not a timm"):
        build_backbone(BackboneConfig(name="timm:resnet_does_not_exist"))
    with pytest.raises(ConfigError, match=r"'timm:resnet18.no_such_tag': .* tagged 'no_such_tag' .*a1_in1k"):
        build_backbone(BackboneConfig(name="timm:resnet18.no_such_tag"))
    with pytest.raises(ConfigError, match="neither small_convnet"):
        build_backbone(BackboneConfig(name="resnet_does_not_exist"))
