"""SD3 prompt encoding from a local dir: tiny random CLIP-L/CLIP-G/T5 + tokenizers built offline.

The folder mimics stabilityai/stable-diffusion-3.5-medium (text_encoder{,_2,_3}, tokenizer{,_2,_3});
widths are distinct (CLIP-L 32, CLIP-G 40, T5 96) so the concat/pad recipe is visible in the shapes.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from todsynth.errors import WeightsNotFoundError
from todsynth.text import PromptCache, SD3PromptEncoder, build_prompt_encoder

T5_LEN = 12
WORDS = "a satellite image of background building road water barren forest agricultural ,".split()


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: 256 printable stand-ins for the bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_tokenizer(path) -> int:
    """vocab.json + merges.txt + tokenizer_config.json as in SD3's tokenizer folders; returns the EOS id."""
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": 256 + i for i, c in enumerate(chars)}
    merges = [("a", "t</w>"), ("o", "f</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                            "model_max_length": 77, **special}))
    return vocab["<|endoftext|>"]


def _t5_tokenizer(path) -> None:
    """A word-level tokenizer.json (tokenizers library) saved as a fast tokenizer, EOS appended like T5."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(path)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    root = tmp_path_factory.mktemp("sd3")
    eos = _clip_tokenizer(root / "tokenizer")
    _clip_tokenizer(root / "tokenizer_2")
    _t5_tokenizer(root / "tokenizer_3")
    torch.manual_seed(0)  # test-only: transformers initialises from the global RNG
    for sub, hidden, proj in (("text_encoder", 32, 16), ("text_encoder_2", 40, 24)):
        cfg = CLIPTextConfig(vocab_size=eos + 1, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                             num_attention_heads=4, projection_dim=proj, max_position_embeddings=77,
                             bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos)
        CLIPTextModelWithProjection(cfg).eval().save_pretrained(root / sub)
    t5 = T5Config(vocab_size=len(WORDS) + 3, d_model=96, d_kv=16, d_ff=64, num_layers=2, num_heads=4,
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(t5).eval().save_pretrained(root / "text_encoder_3")
    return root


@pytest.fixture(scope="module")
def encoder(sd3_dir):
    return SD3PromptEncoder.from_local(sd3_dir, device="cpu", dtype=torch.float32, t5_max_length=T5_LEN)


PROMPTS = ["a satellite image of building, road", "a satellite image of water", ""]


def test_shapes_and_recipe(encoder):
    embeds, pooled = encoder.encode(PROMPTS)
    assert embeds.shape == (3, 77 + T5_LEN, 96) and pooled.shape == (3, 16 + 24)
    assert encoder.joint_dim == 96 and encoder.pooled_dim == 40 and encoder.seq_len == 77 + T5_LEN
    # CLIP-L features, then CLIP-G features, then zero padding to T5's width, on the first 77 tokens
    ids = encoder.tokenizers[0](PROMPTS, padding="max_length", max_length=77, truncation=True,
                                return_tensors="pt").input_ids
    with torch.no_grad():
        out_l = encoder.text_encoders[0](ids, output_hidden_states=True)
    torch.testing.assert_close(embeds[:, :77, :32], out_l.hidden_states[-2])
    torch.testing.assert_close(pooled[:, :16], out_l.text_embeds)
    assert embeds[:, :77, 72:].abs().max() == 0
    assert embeds[:, :77, 32:72].abs().max() > 0 and embeds[:, 77:].abs().max() > 0
    assert not torch.allclose(embeds[0], embeds[1])


def test_matches_diffusers_encode_prompt(encoder):
    """Same numbers as StableDiffusion3Pipeline.encode_prompt (the reference), used here only as an oracle."""
    from diffusers import StableDiffusion3Pipeline

    tl, tg, t5 = encoder.tokenizers
    el, eg, e5 = encoder.text_encoders
    pipe = StableDiffusion3Pipeline(transformer=None, scheduler=None, vae=None, text_encoder=el, tokenizer=tl,
                                    text_encoder_2=eg, tokenizer_2=tg, text_encoder_3=e5, tokenizer_3=t5)
    ref, _, ref_pooled, _ = pipe.encode_prompt(PROMPTS, None, None, device=torch.device("cpu"),
                                               do_classifier_free_guidance=False, max_sequence_length=T5_LEN)
    embeds, pooled = encoder.encode(PROMPTS)
    torch.testing.assert_close(embeds, ref)
    torch.testing.assert_close(pooled, ref_pooled)


def test_batching_does_not_change_results(encoder):
    full, full_pooled = encoder.encode(PROMPTS)
    encoder.batch_size, saved = 1, encoder.batch_size
    try:
        one, one_pooled = encoder.encode(PROMPTS)
    finally:
        encoder.batch_size = saved
    torch.testing.assert_close(one, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_pooled, full_pooled, atol=1e-5, rtol=1e-5)


def test_cache_second_call_encodes_nothing(encoder, tmp_path):
    cache = PromptCache(tmp_path, encoder)
    first = cache.get(PROMPTS)
    assert cache.encoded == 1 and cache.prompts_encoded == 3
    again = PromptCache(tmp_path, encoder).get(PROMPTS)  # a new process would start like this
    second = cache.get(PROMPTS)
    assert cache.encoded == 1 and cache.prompts_cached == 3
    assert first[0].shape == (3, 77 + T5_LEN, 96)
    for a, b in ((first, second), (first, again)):
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


def test_name_identifies_weights_not_path(sd3_dir, encoder, tmp_path):
    copy = shutil.copytree(sd3_dir, tmp_path / "copy")
    other = SD3PromptEncoder.from_local(copy, t5_max_length=T5_LEN)
    assert other.name == encoder.name and other.name.startswith("sd3-")
    assert SD3PromptEncoder.from_local(copy, t5_max_length=T5_LEN + 1).name != encoder.name


def test_build_prompt_encoder_sd3(sd3_dir):
    enc = build_prompt_encoder("sd3", sd3_dir=sd3_dir, t5_max_length=4)
    assert enc.encode(["a satellite image of road"])[0].shape == (1, 81, 96)


@pytest.mark.parametrize("missing", ["text_encoder_2", "tokenizer_3"])
def test_missing_subfolder_names_path_and_how_to_get(sd3_dir, tmp_path, missing):
    copy = shutil.copytree(sd3_dir, tmp_path / "copy")
    shutil.rmtree(copy / missing)
    with pytest.raises(WeightsNotFoundError) as info:
        SD3PromptEncoder.from_local(copy)
    msg = str(info.value)
    assert str(copy / missing) in msg
    assert "stabilityai/stable-diffusion-3.5-medium" in msg and "--local-dir" in msg


def test_missing_dir(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"not found: .*nope.*huggingface-cli download"):
        SD3PromptEncoder.from_local(tmp_path / "nope")


def test_weights_file_missing(sd3_dir, tmp_path):
    copy = shutil.copytree(sd3_dir, tmp_path / "copy")
    for f in (copy / "text_encoder_3").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(WeightsNotFoundError, match=r"cannot load .*text_encoder_3"):
        SD3PromptEncoder.from_local(copy)
