import numpy as np
import pytest
from PIL import Image

from calibkit.data.preprocess import PRESETS, Preprocess, decode_image, fit_to_model, get_preset
from calibkit.errors import CalibkitError


def _gradient(h=8, w=8):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 30, y * 30, (x + y) * 10], axis=-1).astype(np.uint8)


def test_centre_crop_and_tf_normalisation_match_hand_computed_array():
    pixels = _gradient()
    spec = Preprocess(size=(4, 4), crop_fraction=0.5, mean=(127, 127, 127), std=(128, 128, 128))
    got = spec(Image.fromarray(pixels))
    expected = ((pixels[2:6, 2:6].astype(np.float32) - 127) / 128).transpose(2, 0, 1)
    assert got.shape == (3, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_torch_preset_uses_per_channel_mean_std_and_nhwc_layout():
    pixels = _gradient()
    spec = Preprocess(size=(8, 8), crop_fraction=1.0, mean=PRESETS["imagenet-torch"].mean,
                      std=PRESETS["imagenet-torch"].std, layout="NHWC")
    got = spec(Image.fromarray(pixels))
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    np.testing.assert_allclose(got, (pixels - mean) / std, atol=1e-4)


def test_non_square_image_crops_the_short_side(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    assert Preprocess(size=(5, 5), crop_fraction=1.0)(image).shape == (3, 5, 5)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_any_colour_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode}.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
    Image.fromarray(_gradient()).convert(mode).save(path)
    image = decode_image(path)
    assert image.mode == "RGB" and image.size == (8, 8)


def test_16_bit_grayscale_is_scaled_by_its_depth_not_clipped_white(tmp_path):
    values = np.array([[0, 257, 1000], [32768, 60000, 65535]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I"), "Pillow keeps the 16-bit data"
    decoded = np.asarray(decode_image(path))
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(decoded, np.repeat(expected[:, :, None], 3, axis=2))


def test_transparent_pixels_keep_their_colour(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [200, 210, 220]]]
    rgba[..., 3] = [[0, 255], [128, 0]]
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(np.asarray(decode_image(path)), rgba[..., :3])


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path, exif=exif)
    assert decode_image(path).size == (10, 20)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CalibkitError, match=r"bad.jpg: not a readable image .*--skip-bad"):
        decode_image(bad)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CalibkitError, match="truncated.jpg"):
        decode_image(truncated)


def test_fit_to_model_takes_fixed_size_and_refuses_conflicting_size():
    spec = get_preset("imagenet-tf")
    assert fit_to_model(spec, 96, 128, "NHWC", "m.onnx").size == (96, 128)
    assert fit_to_model(spec, None, None, "NCHW", "m.onnx", (160, 160)).size == (160, 160)
    with pytest.raises(CalibkitError, match=r"m.onnx: model input is 96x128 but --size asks for 64x64"):
        fit_to_model(spec, 96, 128, "NCHW", "m.onnx", (64, 64))


def test_validation_errors():
    with pytest.raises(CalibkitError, match="unknown preprocessing preset"):
        get_preset("imagenet-caffe")
    with pytest.raises(CalibkitError, match="interpolation"):
        Preprocess(interpolation="lanczos9")
    with pytest.raises(CalibkitError, match="std"):
        Preprocess(std=(1.0, 0.0, 1.0))


def test_stretch_with_bgr_and_plain_scaling():
    pixels = _gradient(4, 8)
    spec = Preprocess(size=(4, 8), resize="stretch", channel_order="BGR", mean=(0, 0, 0), std=(255, 255, 255),
                      interpolation="nearest")
    got = spec(Image.fromarray(pixels))
    np.testing.assert_allclose(got, (pixels[..., ::-1] / 255).transpose(2, 0, 1), atol=1e-6)


def test_letterbox_keeps_the_aspect_ratio_and_pads_evenly():
    pixels = np.full((4, 8, 3), 200, np.uint8)
    spec = Preprocess(size=(8, 8), resize="letterbox", pad_value=114, mean=(0, 0, 0), std=(1, 1, 1),
                      interpolation="nearest", layout="NHWC")
    got = spec(Image.fromarray(pixels))
    assert (got[:2] == 114).all() and (got[6:] == 114).all() and (got[2:6] == 200).all()
    np.testing.assert_allclose(spec.to_image_coords(np.array([[0, 2, 8, 6]]), (8, 4)), [[0, 0, 8, 4]])


def test_pad_right_scales_to_the_height_and_pads_the_width():
    pixels = np.full((10, 20, 3), 50, np.uint8)
    spec = Preprocess(size=(5, 16), resize="pad-right", pad_value=127.5, mean=(0, 0, 0), std=(1, 1, 1),
                      interpolation="nearest", layout="NHWC")
    got = spec(Image.fromarray(pixels))
    assert (got[:, :10] == 50).all() and (got[:, 10:] == 128).all()  # 127.5 rounds to 128 on 8 bits


def test_crop_of_the_whole_short_side_never_leaves_the_image():
    # 225 px wide: crop_fraction 1.0 used to compute a box 1e-14 px outside the image and raise
    image = Image.fromarray(np.zeros((329, 225, 3), np.uint8))
    assert Preprocess(size=(224, 224), crop_fraction=1.0)(image).shape == (3, 224, 224)


def test_a_dynamic_model_size_needs_an_explicit_size():
    with pytest.raises(CalibkitError, match="pass --size"):
        fit_to_model(Preprocess(), None, None, "NCHW", "m.onnx")
    assert fit_to_model(Preprocess(), None, None, "NCHW", "m.onnx", (48, 320)).size == (48, 320)
    assert fit_to_model(Preprocess(), 224, 224, "NCHW", "m.onnx").size == (224, 224)
