"""explorer.images.load_image: every odd upload becomes an upright RGB image or one clear sentence."""

import numpy as np
import pytest
from PIL import Image

from explorer.errors import InputError
from explorer.images import load_image
from tests import bad_inputs

LIMIT = 40_000_000


@pytest.mark.parametrize("maker,needle", list(bad_inputs.BAD.items()), ids=lambda v: getattr(v, "__name__", v))
def test_bad_files_get_a_clear_sentence(tmp_path, maker, needle):
    with pytest.raises(InputError) as info:
        load_image(str(maker(tmp_path)), LIMIT)
    message = str(info.value)
    assert needle in message.lower()
    assert message.endswith(".") and "\n" not in message


def test_huge_image_states_the_limit(tmp_path):
    with pytest.raises(InputError, match="40 megapixels"):
        load_image(str(bad_inputs.huge_image(tmp_path)), LIMIT)


def test_over_limit_but_openable_is_refused_with_size(tmp_path):
    path = bad_inputs.good_jpeg(tmp_path, size=(400, 300))
    with pytest.raises(InputError, match=r"400×300"):
        load_image(str(path), max_pixels=100_000)


@pytest.mark.parametrize("maker,size", list(bad_inputs.ODD_BUT_FINE.items()), ids=lambda v: getattr(v, "__name__", v))
def test_odd_formats_load_as_upright_rgb(tmp_path, maker, size):
    im = load_image(str(maker(tmp_path)), LIMIT)
    assert im.mode == "RGB"
    assert im.size == size


def test_sixteen_bit_keeps_its_range(tmp_path):
    arr = np.asarray(load_image(str(bad_inputs.png16(tmp_path)), LIMIT))
    assert arr.min() == 0 and arr.max() == 255  # scaled, not clipped to white


def test_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    assert (np.asarray(load_image(str(path), LIMIT)) == 255).all()


def test_animated_gif_gives_first_frame(tmp_path):
    arr = np.asarray(load_image(str(bad_inputs.animated_gif(tmp_path)), LIMIT))
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 50  # red, the first frame


def test_exif_rotation_is_applied(tmp_path):
    im = load_image(str(bad_inputs.exif_rotated(tmp_path)), LIMIT)
    # stored 300×200 with a left-to-right red ramp; rotated 90° clockwise the ramp runs top to bottom
    arr = np.asarray(im).astype(int)
    assert arr[0, :, 0].mean() < arr[-1, :, 0].mean()


def test_payload_dict_and_missing_input(tmp_path):
    path = bad_inputs.good_jpeg(tmp_path)
    assert load_image({"path": str(path)}, LIMIT).size == (320, 240)
    with pytest.raises(InputError, match="upload an image"):
        load_image(None, LIMIT)
    with pytest.raises(InputError, match="could not be found"):
        load_image(str(tmp_path / "missing.png"), LIMIT)
