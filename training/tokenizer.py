"""A small offline Qwen-style tokenizer, so tiny test models need no model hub.

Real Qwen-VL checkpoints ship a 151k-token byte-level BPE. For tests and tiny models we train our own
byte-level BPE (a few thousand tokens) on an English corpus written for this project, with the same
pre-tokenizer split pattern, normaliser and special tokens as Qwen2's tokenizer, laid out the same way:
the BPE vocabulary first, then the special tokens in Qwen's order, then `<think>` / `</think>`.

The files are written so that transformers' `Qwen2Tokenizer` (which rebuilds its pipeline from the
vocab and merges) and `tokenizers.Tokenizer.from_file("tokenizer.json")` produce the same ids.

Only `tokenizers` and `json` are used here: the torch-free runtime can import this module.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from descore_sdk.config import FAMILIES, FAMILY_SYSTEM_PROMPT
from descore_sdk.errors import InvalidInputError

# How Qwen2's tokenizer splits text before byte-level BPE: English contractions, letter runs with one
# optional leading non-letter, single digits, punctuation runs, newlines, whitespace.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Special tokens of the Qwen-VL tokenizers, in their id order (they follow the BPE vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added after the specials but NOT special: decoding with skip_special_tokens keeps them, as in Qwen3.
THINK_TOKENS = ("<think>", "</think>")

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Size of the trained BPE vocabulary, the 256 byte symbols included; the added tokens come on top.
BPE_VOCAB_SIZE = 3000

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


# -- chat template ----------------------------------------------------------------------------------
# Our own Jinja template producing Qwen's ChatML layout. The Qwen2-VL / Qwen2.5-VL templates open with
# a default system turn when the conversation has none; Qwen3-VL's does not.
_DEFAULT_SYSTEM_TURN = """\
{%- if loop.first and message['role'] != 'system' -%}
<|im_start|>system
SYSTEM_PROMPT<|im_end|>
{% endif -%}
"""
_MESSAGE_TURN = """\
<|im_start|>{{ message['role'] }}
{% if message['content'] is string -%}
{{ message['content'] }}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'video' -%}
<|vision_start|><|video_pad|><|vision_end|>
{%- elif part['type'] == 'image' -%}
<|vision_start|><|image_pad|><|vision_end|>
{%- elif part['type'] == 'text' -%}
{{ part['text'] }}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
<|im_end|>
"""
_GENERATION_PROMPT = """\
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""


def chat_template(family: str) -> str:
    """The Jinja chat template for `family` (ChatML; a default system turn for Qwen2/2.5-VL only)."""
    _check_family(family)
    system = FAMILY_SYSTEM_PROMPT[family]
    preamble = _DEFAULT_SYSTEM_TURN.replace("SYSTEM_PROMPT", system) if system else ""
    return "{%- for message in messages -%}\n" + preamble + _MESSAGE_TURN + "{% endfor -%}\n" + _GENERATION_PROMPT


# -- training corpus --------------------------------------------------------------------------------
# Written for this project: the vocabulary a video reward model reads and writes (prompts describing
# scenes, judgements of visual quality, motion and alignment, timestamps).
_SUBJECTS = """a cat|a small dog|two dogs|a horse|a red car|an old truck|a bicycle|a train|a young woman|an old man|
a child|a group of friends|a chef|a dancer|a robot|a dragon|an astronaut|a surfer|a skier|a butterfly|a bird|
a flock of birds|a fish|a whale|a lion|a tiger|an elephant|a panda|a rabbit|a fox|a wolf|a bear|a deer|
a boat|a sailboat|a plane|a helicopter|a rocket|a spaceship|a drone|a city street|a crowd|a musician|
a painter|a teacher|a student|a scientist|a soldier|a knight|a wizard|a ghost|a monster|a teddy bear|
a wooden house|a castle|a lighthouse|a waterfall|a river|a mountain|a volcano|a forest|a flower|a tree|
a candle|a cup of coffee|a bowl of soup|a cake|a pizza|a clock|a book|a guitar|a piano|a violin|a camera""".replace("\n", "").split("|")
_ACTIONS = """walking|running|jumping|dancing|flying|swimming|driving|riding|cooking|eating|drinking|reading|
writing|painting|singing|playing|sleeping|smiling|laughing|crying|turning around|looking at the camera|
waving its hand|moving slowly|moving quickly|spinning|falling|rising|floating|exploding|burning|melting|
growing|shrinking|glowing|shaking|climbing|crossing the road|sitting|standing still|resting|talking""".replace(
    "\n", ""
).split("|")
_PLACES = """on a beach|in a forest|in the snow|in the rain|at night|at sunset|at sunrise|in a city|in the desert|
in space|under water|in a kitchen|in a park|on a mountain|on a bridge|in a field of flowers|in a small room|
on a busy street|in a garden|near a lake|by the sea|in the clouds|inside a museum|in a library|on a stage|
in a dark cave|on the moon|in a futuristic city|in an old village|in a train station""".replace(
    "\n", ""
).split("|")
_STYLES = """cinematic|realistic|photorealistic|anime style|cartoon style|oil painting|watercolor|
black and white|slow motion|time lapse|aerial view|close up|wide shot|handheld camera|tracking shot|
high resolution|4k|soft lighting|golden hour|neon lights|vintage film|dreamy|colorful|dark and moody""".replace(
    "\n", ""
).split("|")
_JUDGEMENTS = """The visual quality is high, with sharp details and natural colors.|
The visual quality is low: the frames are blurry and noisy.|
The image is clear but slightly overexposed in the bright areas.|
There are visible artifacts around the edges of moving objects.|
The textures look smooth and consistent across frames.|
The motion is smooth and physically plausible.|
The motion is jerky and the subject moves in an unnatural way.|
The camera movement is stable and follows the subject well.|
Some frames flicker and the background changes from one frame to the next.|
The hands and faces are distorted, which lowers the quality.|
The video matches the prompt well: every object described is present.|
The video does not follow the prompt: the main subject is missing.|
The prompt asks for a red car, but the car in the video is blue.|
The action in the prompt happens, but it is too slow and incomplete.|
Text alignment is good, although the style differs from what was asked.|
The lighting is consistent and the shadows point in the right direction.|
Objects appear and disappear without reason, breaking temporal consistency.|
The scene composition is balanced and pleasant to watch.|
The colors are washed out and the contrast is weak.|
Overall this is a strong video with only minor problems.|
Overall this video is poor and would not satisfy the user.|
Compared with the prompt, the number of animals is wrong.|
The physics look wrong: water flows upward and objects pass through each other.|
The first second is good, but the quality drops after three seconds.|
Visual quality: the picture is sharp and clean, the colours look natural.|
Motion: the object moves steadily along a straight path, then it freezes and jumps.|
Alignment: the prompt asks for a blue square, and the object seen is a blue square.|
Image: heavy grain, a slight blur and a warm tint cover the whole frame.|
A shape moves from left to right, from right to left, from top to bottom or from bottom to top.""".replace(
    "\n", ""
).split("|")
_PARAGRAPH = """\
You are judging a generated video against the prompt it was generated from. Think about its visual
quality, motion quality and text alignment, then rate it. Please watch the whole video before you
answer, describe what you see, explain your reasoning step by step, and finally give your rating.
Visual quality covers sharpness, noise, color, lighting, artifacts and aesthetics. Motion quality
covers smoothness, stability, physical plausibility, temporal consistency and the amount of motion.
Text alignment covers whether the objects, attributes, actions, counts, positions and style named in
the prompt appear in the video. A reward model reads the video frames sampled at two frames per
second, writes its reasoning, and then outputs one score for each dimension. Higher scores are better.
Scores: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Ratings: bad, poor, fair, average, good, great, excellent.
Time stamps: 0.0 seconds, 0.5 seconds, 1.0 seconds, 1.5 seconds, 2.0 seconds, 2.5 seconds, 3 seconds.
The clip is 4 seconds long, 8 frames, 448 x 448 pixels, 24 fps, 30 fps, 60 fps, 16:9, 1080p, 720p.
It's clear that the video isn't perfect: it doesn't show the dog, we'll say it's weak,
they're wrong, I'm sure, you'd agree, we've seen better.
Punctuation: commas, periods. Questions? Answers! Quotes "like this" and 'this'; (brackets) [lists]
{braces} <tags> a/b a-b a_b a+b=c 50% #1 @user $5 & more...: - * ~ | \\ ^ `code`.
"""


# A broader word list so the BPE learns whole words for most of what prompts and rationales say, as a
# real Qwen vocabulary has them: with "triangle" as t|ri|an|g|le and "bottom" as b|ot|t|om, the synthetic
# benchmark's rationales took 126 tokens instead of 76, and a tiny model had to match words spread
# over several tokens when it compares what a prompt asks with what it saw.
_ADJECTIVES = """bright dark sharp blurry soft hard smooth rough warm cold wet dry quiet loud huge tiny tall short
long wide narrow deep shallow heavy light fast slow strong weak clean dirty empty full fresh stale golden
silver purple orange yellow green blue white black brown pink gray colorful pale vivid dull shiny glossy
natural artificial realistic unrealistic stable unstable consistent inconsistent coherent fluent natural
beautiful ugly pleasant unpleasant calm busy crowded lonely happy sad angry scared curious tired excited
ancient modern futuristic magical mysterious peaceful dramatic epic cozy elegant simple complex detailed
noisy grainy pixelated distorted deformed broken missing extra accurate inaccurate correct wrong faithful
careful sudden gradual continuous discontinuous gentle violent graceful clumsy steady shaky static dynamic
vertical horizontal diagonal circular random regular visible invisible transparent reflective foggy misty
sunny cloudy rainy snowy windy stormy frozen burning floating flying hidden obvious subtle strange normal
straight curved round square triangular slight noticeable violent visual motion matching mismatched asked seen""".split()
_NOUNS = """video clip frame frames scene scenes shot camera lens motion movement quality detail details color
colors light lighting shadow shadows texture textures background foreground subject object objects person
people face faces hand hands eye eyes body bodies arm arms leg legs hair head mouth smile animal animals
water fire smoke sky cloud clouds sun moon star stars tree trees grass leaf leaves flower flowers road
street building buildings window door wall floor table chair bed room kitchen garden city village country
ocean sea lake river wave waves beach sand rock stone mountain hill valley field forest jungle desert snow
ice rain storm wind fog dust car cars truck bus train plane ship boat bike wheel engine robot machine
screen phone computer keyboard music song sound voice dance game ball team player crowd audience stage
story action actions event events artifact artifacts flicker glitch blur noise error errors problem
problems reason reasons answer question prompt prompts score scores rating ratings reward rewards
dimension dimensions alignment consistency realism aesthetics composition physics gravity speed direction
distance position size shape number count style mood atmosphere contrast brightness saturation exposure
resolution transition transitions beginning middle end second seconds minute minutes moment time
judgement evaluation assessment comparison preference winner loser pair example examples dataset
circle circles square squares triangle triangles rectangle line dot path paths corner edge edges side top
bottom left right centre center tint tints grain colour colours cast stutter jump jumps match mismatch""".split()
_VERBS = """appear disappear move turn stop start begin end follow track zoom pan tilt rotate shake flicker
blur change remain stay look seem show reveal hide enter leave cross pass reach hold carry throw catch
open close push pull lift drop break fix build destroy create describe explain compare judge rate score
evaluate prefer match contain include miss ignore follow violate respect improve reduce increase decrease
grow shrink fade glow shine reflect float sink fall rise walk run jump dance fly swim drive ride cook eat
drink read write paint sing play sleep smile laugh cry talk sit stand wait watch listen think decide
see saw seen ask asked freeze freezes stutter stutters jump jumps repeat repeats smear smears cover covers""".split()
_ADVERBS = """slowly quickly smoothly suddenly gradually clearly barely fully partly mostly rarely often always
never sometimes naturally strangely carefully gently roughly exactly nearly almost very quite rather too
really truly highly poorly badly well better worse best worst violently slightly steadily off across along into onto previous whole has""".split()


@functools.lru_cache(maxsize=1)
def training_corpus() -> tuple[str, ...]:
    """Our English training text, one line per item; deterministic (a fixed-seed generator)."""
    rng = random.Random(1234)
    lines = [line for line in _PARAGRAPH.splitlines() if line]
    lines += _JUDGEMENTS
    for _ in range(2500):
        subject, action, place, style = (rng.choice(xs) for xs in (_SUBJECTS, _ACTIONS, _PLACES, _STYLES))
        seconds = f"{rng.randint(0, 9)}.{rng.choice((0, 5))}"
        score = rng.randint(1, 10)
        lines.append(f"{subject.capitalize()} {action} {place}, {style}.")
        lines.append(f"At {seconds} seconds {subject} is {action}. {rng.choice(_JUDGEMENTS)} Score: {score}/10.")
        adjective, noun, verb, adverb = (rng.choice(xs) for xs in (_ADJECTIVES, _NOUNS, _VERBS, _ADVERBS))
        inflected = rng.choice((verb, verb + "s", verb + "ed", verb + "ing"))
        lines.append(f"The {adjective} {noun} {inflected} {adverb}; the {rng.choice(_NOUNS)} looks {rng.choice(_ADJECTIVES)}.")
    return tuple(lines)


# -- building ---------------------------------------------------------------------------------------
def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise InvalidInputError(f"Unknown model family {family!r}; use one of {', '.join(FAMILIES)}.")


def _empty_qwen_style_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE with Qwen2's normaliser, pre-tokenizer, post-processor and decoder."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            # use_regex=False: the Split above already did the splitting; ByteLevel only maps bytes.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    tokenizer = _empty_qwen_style_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    # Added tokens get the ids right after the BPE vocabulary, in this order.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tokenizer.to_str()


def build_tokenizer(out_dir: str | Path | None = None, family: str = "qwen3_vl") -> Tokenizer:
    """Train (once per process; ~1 s) and return the offline tokenizer; write its files if `out_dir`."""
    _check_family(family)
    tokenizer = Tokenizer.from_str(_trained_tokenizer_json())
    if out_dir is not None:
        save_tokenizer_files(out_dir, family, tokenizer=tokenizer)
    return tokenizer


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the special and think tokens in `tokenizer`, by token string."""
    ids = {}
    for token in SPECIAL_TOKENS + THINK_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise InvalidInputError(f"Tokenizer has no {token!r} token; it is not a Qwen-VL tokenizer.")
        ids[token] = token_id
    return ids


def added_tokens_decoder(tokenizer: Tokenizer) -> dict[str, dict]:
    """The `added_tokens_decoder` entry of tokenizer_config.json describing `tokenizer`'s added tokens."""
    added = {}
    for token_id, token in sorted(tokenizer.get_added_tokens_decoder().items()):
        added[str(token_id)] = {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
    return added


def tokenizer_config(tokenizer: Tokenizer, family: str) -> dict:
    """The tokenizer_config.json content transformers expects for our Qwen2Tokenizer."""
    _check_family(family)
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tokenizer),
        "extra_special_tokens": [t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "model_max_length": 32768,
        "chat_template": chat_template(family),
    }


def write_tokenizer_files(out_dir: str | Path, tokenizer: Tokenizer, config: dict, template: str | None) -> None:
    """Write `tokenizer` with its tokenizer_config.json (`config`, whose added-token table is refreshed
    from `tokenizer`) and, if given, the chat template as chat_template.jinja (where transformers
    looks for it first) and inside the config."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {**config, "added_tokens_decoder": added_tokens_decoder(tokenizer)}
    if template is not None:
        config["chat_template"] = template
    tokenizer.save(str(out / TOKENIZER_FILE), pretty=True)
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    if template is not None:
        (out / CHAT_TEMPLATE_FILE).write_text(template)


def save_tokenizer_files(out_dir: str | Path, family: str, *, tokenizer: Tokenizer | None = None) -> Path:
    """Write the offline tokenizer's tokenizer.json, tokenizer_config.json and chat_template.jinja.

    `tokenizer` defaults to the offline one; pass another (e.g. with `<Reward>` added) to save it
    with the same config layout. Returns the folder.
    """
    _check_family(family)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(family=family)
    write_tokenizer_files(out_dir, tokenizer, tokenizer_config(tokenizer, family), chat_template(family))
    return Path(out_dir)
