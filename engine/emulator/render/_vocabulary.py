"""Words, colours, scenes and every tuning constant of the renderer (data, not logic: it is
long because the vocabulary is)."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Final

from PIL import (
    Image,
    ImageFilter,
    ImageFont,
)

RGB = tuple[int, int, int]
FBox = tuple[float, float, float, float]
IBox = tuple[int, int, int, int]
Pos = tuple[float | None, float | None]
PointMap = Callable[[float, float], tuple[float, float]]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# --------------------------------------------------------------------------- limits & encoding

MAX_SIDE: Final = 8192
# Checked from the header before decoding, so a hostile base cannot make us allocate gigabytes.
MAX_BASE_PIXELS: Final = 64_000_000
DECODE_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF")
OUTPUT_FORMATS: Final = {
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/webp": "image/webp",
}
JPEG_QUALITY: Final = 90
JPEG_COMMENT_MAX: Final = 60_000
WEBP_QUALITY: Final = 90
# Level 1 deflate after the "Up" filter is ~3x faster than Pillow's adaptive PNG encoder.  Grain
# leaves nothing for LZ matching to find, so RLE (the fastest) is used; flat art keeps full LZ77,
# which also catches the 3-byte period of a colour gradient's row deltas.
PNG_ZLIB_LEVEL: Final = 1
# (strategy, memLevel): measured fastest for each kind of image at the same output size.
PNG_ZLIB_GRAIN: Final = (zlib.Z_RLE, 8)
PNG_ZLIB_FLAT: Final = (zlib.Z_DEFAULT_STRATEGY, 6)
PNG_FILTER_UP: Final = 2
PNG_BAND_ROWS: Final = 64
PNG_IDAT_CHUNK: Final = 1 << 20
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
META_KEY: Final = "nanoedit"
META_VERSION: Final = 1
MAX_MANIFEST_OBJECTS: Final = 32

# --------------------------------------------------------------------------- grain

# +-3 levels of monochrome noise makes a 1024x1024 PNG weigh ~1.3 MB like a real model output,
# and being monochrome it keeps grayscale images exactly gray.
GRAIN_AMPLITUDE: Final = 3
# One noise tile is generated once and tiled/offset per image: cheap, and with Z_RLE the tile
# period cannot be exploited by the compressor, so sizes stay realistic.
GRAIN_TILE: Final = 1024
GRAIN_MASTER_SEED: Final = 0x6E616E6F
GRAIN_OFFSET_MUL_X: Final = 2654435761
GRAIN_OFFSET_MUL_Y: Final = 40503
GRAIN_OFFSET_ADD_Y: Final = 12345

# --------------------------------------------------------------------------- colours

COLOURS: Final[dict[str, RGB]] = {
    "red": (220, 40, 40),
    "green": (50, 160, 70),
    "blue": (40, 90, 220),
    "yellow": (245, 210, 40),
    "orange": (245, 140, 30),
    "purple": (130, 60, 180),
    "violet": (140, 80, 200),
    "pink": (240, 130, 180),
    "brown": (130, 80, 45),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "cyan": (40, 200, 220),
    "magenta": (210, 40, 170),
    "teal": (30, 140, 140),
    "gold": (212, 175, 55),
    "silver": (190, 190, 200),
    "navy": (25, 35, 100),
    "maroon": (120, 25, 35),
    "olive": (120, 120, 40),
    "lime": (150, 220, 50),
    "beige": (225, 205, 170),
    "tan": (200, 165, 120),
    "cream": (250, 240, 210),
    "ivory": (250, 248, 230),
    "turquoise": (60, 200, 190),
    "indigo": (75, 40, 140),
    "crimson": (190, 20, 50),
    "scarlet": (230, 36, 20),
    "coral": (250, 120, 95),
    "lavender": (190, 170, 230),
    "mint": (160, 225, 190),
    "sage": (150, 175, 140),
    "peach": (250, 190, 150),
    "salmon": (250, 140, 115),
    "khaki": (195, 180, 130),
    "charcoal": (55, 55, 60),
    "aqua": (80, 220, 230),
    "emerald": (30, 150, 90),
    "wooden": (150, 100, 60),
    "wood": (150, 100, 60),
    "sky blue": (120, 190, 240),
    "baby blue": (160, 205, 245),
    "royal blue": (50, 80, 200),
    "hot pink": (250, 80, 160),
    "forest green": (35, 110, 50),
    "lime green": (130, 210, 60),
    "navy blue": (25, 35, 100),
}
LIGHTER_WORDS: Final = frozenset({"light", "pale", "pastel", "soft"})
DARKER_WORDS: Final = frozenset({"dark", "deep"})
LIGHTER_MIX: Final = 0.45
DARKER_MIX: Final = 0.4
OUTLINE_SHADE: Final = -0.35
# Used for shapes without a colour word; picked with the seeded RNG.
SHAPE_PALETTE: Final[tuple[RGB, ...]] = (
    (220, 60, 60),
    (60, 120, 220),
    (60, 170, 90),
    (240, 180, 40),
    (150, 80, 190),
    (240, 120, 60),
    (40, 170, 170),
)
# Unknown nouns get a stable colour picked by a hash of the word (same noun, same colour).
LABEL_BOX_PALETTE: Final[tuple[RGB, ...]] = (
    (120, 160, 210),
    (210, 150, 120),
    (150, 190, 130),
    (200, 160, 210),
    (230, 200, 120),
    (140, 200, 200),
)
TEXT_DARK: Final[RGB] = (25, 25, 30)
TEXT_LIGHT: Final[RGB] = (250, 250, 250)
TEXT_LUMA_SPLIT: Final = 140
CAPTION_SHADE: Final = 0.3
SKIN: Final[RGB] = (240, 200, 170)
TRUNK: Final[RGB] = (120, 80, 45)
WINDOW_BLUE: Final[RGB] = (170, 210, 240)
TYRE: Final[RGB] = (35, 35, 40)
LEAF_GREEN: Final[RGB] = (70, 150, 70)
TERRACOTTA: Final[RGB] = (190, 100, 60)
FLOWER_CENTRE: Final[RGB] = (250, 200, 40)
ROOF_RED: Final[RGB] = (150, 50, 40)
COFFEE_BROWN: Final[RGB] = (110, 70, 40)
EYE_YELLOW: Final[RGB] = (230, 210, 60)
PUPIL: Final[RGB] = (20, 20, 20)
NOSE_PINK: Final[RGB] = (230, 120, 140)
BEAK_ORANGE: Final[RGB] = (240, 160, 30)
HUB_GRAY: Final[RGB] = (170, 170, 175)
TROUSER_BLUE: Final[RGB] = (50, 60, 90)
SNOW_WHITE: Final[RGB] = (250, 250, 252)
SAIL_WHITE: Final[RGB] = (250, 250, 245)
SAIL_EDGE: Final[RGB] = (180, 180, 180)
BALL_STRIPE: Final[RGB] = (250, 250, 250)
STRING_GRAY: Final[RGB] = (90, 90, 90)
PAGE_CREAM: Final[RGB] = (245, 240, 225)
DARK_GRAY: Final[RGB] = (60, 60, 60)
LAMP_METAL: Final[RGB] = (80, 80, 80)
SCREEN_BLUE: Final[RGB] = (40, 60, 90)
INSECT_BODY: Final[RGB] = (40, 30, 30)

# --------------------------------------------------------------------------- backgrounds

BackgroundStops = tuple[tuple[float, RGB], ...]
BACKGROUND_SCENES: Final[dict[str, BackgroundStops]] = {
    "sunset": (
        (0.0, (40, 40, 110)),
        (0.45, (200, 90, 110)),
        (0.75, (250, 160, 70)),
        (1.0, (255, 210, 120)),
    ),
    "sunrise": ((0.0, (150, 180, 230)), (0.6, (250, 200, 180)), (1.0, (255, 230, 170))),
    "night": ((0.0, (8, 10, 35)), (1.0, (30, 40, 90))),
    "space": ((0.0, (5, 5, 15)), (1.0, (25, 10, 40))),
    "day": ((0.0, (90, 160, 235)), (1.0, (200, 230, 250))),
    "ocean": ((0.0, (30, 110, 170)), (1.0, (10, 40, 90))),
    "beach": (
        (0.0, (120, 190, 240)),
        (0.55, (200, 230, 250)),
        (0.55, (40, 130, 190)),
        (0.72, (60, 160, 200)),
        (0.72, (235, 215, 165)),
        (1.0, (220, 195, 140)),
    ),
    "forest": (
        (0.0, (130, 190, 235)),
        (0.62, (210, 235, 245)),
        (0.62, (90, 160, 80)),
        (1.0, (50, 110, 50)),
    ),
    "snow": (
        (0.0, (200, 220, 240)),
        (0.65, (245, 248, 252)),
        (0.65, (250, 250, 252)),
        (1.0, (230, 235, 245)),
    ),
    "desert": (
        (0.0, (150, 200, 240)),
        (0.6, (240, 225, 200)),
        (0.6, (230, 190, 120)),
        (1.0, (200, 150, 90)),
    ),
    "indoor": (
        (0.0, (235, 225, 210)),
        (0.7, (215, 200, 180)),
        (0.7, (170, 130, 95)),
        (1.0, (140, 100, 70)),
    ),
    "city": (
        (0.0, (170, 190, 215)),
        (0.7, (220, 225, 235)),
        (0.7, (90, 90, 95)),
        (1.0, (60, 60, 65)),
    ),
}
SCENE_WORDS: Final[dict[str, str]] = {
    "sunset": "sunset",
    "dusk": "sunset",
    "twilight": "sunset",
    "sunrise": "sunrise",
    "dawn": "sunrise",
    "morning": "sunrise",
    "night": "night",
    "midnight": "night",
    "nighttime": "night",
    "starry": "night",
    "space": "space",
    "galaxy": "space",
    "cosmos": "space",
    "outer": "space",
    "day": "day",
    "daytime": "day",
    "sky": "day",
    "sunny": "day",
    "ocean": "ocean",
    "sea": "ocean",
    "underwater": "ocean",
    "beach": "beach",
    "shore": "beach",
    "coast": "beach",
    "forest": "forest",
    "park": "forest",
    "garden": "forest",
    "meadow": "forest",
    "field": "forest",
    "grass": "forest",
    "jungle": "forest",
    "woods": "forest",
    "snow": "snow",
    "winter": "snow",
    "snowy": "snow",
    "desert": "desert",
    "kitchen": "indoor",
    "room": "indoor",
    "indoor": "indoor",
    "indoors": "indoor",
    "studio": "indoor",
    "office": "indoor",
    "cafe": "indoor",
    "interior": "indoor",
    "city": "city",
    "street": "city",
    "urban": "city",
    "town": "city",
}
BACKGROUND_HEADS: Final = frozenset(
    {"background", "backdrop", "sky", "gradient", "wallpaper", "wall"}
)
# Soft default gradients (top, bottom) for prompts that name no background.
DEFAULT_GRADIENTS: Final[tuple[tuple[RGB, RGB], ...]] = (
    ((235, 240, 250), (200, 215, 235)),
    ((250, 240, 230), (230, 210, 200)),
    ((235, 245, 235), (205, 225, 210)),
    ((245, 238, 250), (220, 210, 235)),
    ((250, 248, 235), (230, 225, 200)),
)
COLOUR_BG_TOP_LIGHTEN: Final = 0.12
BG_JITTER: Final = 3
GRADIENT_SAMPLES: Final = 256
STAR_COUNT: Final = 70
STAR_SKY_FRACTION: Final = 0.75
STAR_COLOUR: Final[RGB] = (250, 250, 235)

# --------------------------------------------------------------------------- layout

OBJECT_BASE_FRACTION: Final = 0.3
POSITION_JITTER: Final = 0.02
SIZE_WORDS: Final[dict[str, float]] = {
    "tiny": 0.45,
    "small": 0.65,
    "little": 0.65,
    "mini": 0.5,
    "medium": 1.0,
    "big": 1.4,
    "large": 1.4,
    "huge": 1.8,
    "giant": 1.8,
    "enormous": 1.8,
    "tall": 1.2,
}
COUNT_WORDS: Final[dict[str, int]] = {
    "a": 1,
    "an": 1,
    "one": 1,
    "single": 1,
    "another": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "several": 3,
    "some": 3,
    "few": 3,
    "many": 5,
    "pair": 2,
    "couple": 2,
}
VAGUE_COUNT_WORDS: Final = frozenset({"some", "several", "few", "many", "couple"})
MAX_COPIES: Final = 8
MAX_OBJECTS: Final = 48  # objects drawn from one prompt; the rest of a long prompt is ignored
MAX_CLAUSES: Final = 64  # instructions applied from one edit; the rest are ignored
PLURAL_DEFAULT_COUNT: Final = 3
GROUND_Y: Final = 0.62
SKY_Y: Final = 0.2
MID_Y: Final = 0.55
HALF: Final = 0.5
# Where "on <surface>" puts things, as a fraction of the surface's box height from its top.
SURFACE_LEVEL: Final[dict[str, float]] = {"table": 0.27, "chair": 0.55, "book": 0.1}
SURFACE_DEFAULT: Final = 0.15
ON_SCALE: Final = 0.55
POSITIONS: Final[dict[str, Pos]] = {
    "upper left": (0.25, 0.25),
    "top left": (0.25, 0.25),
    "left top": (0.25, 0.25),
    "upper right": (0.75, 0.25),
    "top right": (0.75, 0.25),
    "right top": (0.75, 0.25),
    "lower left": (0.25, 0.75),
    "bottom left": (0.25, 0.75),
    "left bottom": (0.25, 0.75),
    "lower right": (0.75, 0.75),
    "bottom right": (0.75, 0.75),
    "right bottom": (0.75, 0.75),
    "far left": (0.14, None),
    "far right": (0.86, None),
    "left": (0.25, None),
    "right": (0.75, None),
    "top": (None, 0.22),
    "upper": (None, 0.25),
    "bottom": (None, 0.78),
    "lower": (None, 0.75),
    "center": (0.5, 0.5),
    "centre": (0.5, 0.5),
    "middle": (0.5, 0.5),
}
MOVE_POSITIONS: Final[dict[str, Pos]] = {"up": (None, 0.25), "down": (None, 0.75)}
SLIGHT_WORDS: Final = frozenset({"slightly", "bit", "little", "tad"})
SLIGHT_MOVE: Final = 0.4
LABEL_FONT_FRACTION: Final = 0.13
LABEL_FONT_MAX_FRACTION: Final = 0.045
TEXT_FONT_FRACTION: Final = 0.08
TEXT_WIDTH_FRACTION: Final = 0.9
TEXT_DEFAULT_POS: Final[tuple[float, float]] = (0.5, 0.1)
TEXT_MAX_CHARS: Final = 120
FONT_MIN_SIZE: Final = 8
CAPTION_BAND_FRACTION: Final = 0.1
CAPTION_MIN_PX: Final = 14
CAPTION_MAX_CHARS: Final = 90

# --------------------------------------------------------------------------- edit tuning

BG_MATCH_LOW: Final = 18  # max-channel difference fully counted as background
BG_MATCH_HIGH: Final = 40  # ... and fully counted as foreground
FG_THRESHOLD: Final = 26
COLOUR_MATCH: Final = 70
INPAINT_STRIP: Final = 3
REMOVE_MARGIN: Final = 4
TINT_STRENGTH: Final = 0.45
BRIGHTER_GAIN: Final = 1.18
BRIGHTER_LIFT: Final = 14
DARKER_GAIN: Final = 0.72
CONTRAST_UP: Final = 1.35
CONTRAST_DOWN: Final = 0.7
SATURATE: Final = 1.5
DESATURATE: Final = 0.5
BLUR_FRACTION: Final = 0.006
BLUR_MIN_RADIUS: Final = 1.5
BLUR_HALF_MIN_SIDE: Final = 64
SHARPEN: Final = ImageFilter.UnsharpMask(radius=2, percent=160, threshold=2)
PIXEL_BLOCKS: Final = 48
POSTERIZE_BITS: Final = 3
VIGNETTE_DEPTH: Final = 0.55
WARM_MATRIX: Final = (1.08, 0.0, 0.0, 12.0, 0.0, 1.02, 0.0, 4.0, 0.0, 0.0, 0.86, 0.0)
COOL_MATRIX: Final = (0.88, 0.0, 0.0, 0.0, 0.0, 0.98, 0.0, 4.0, 0.0, 0.0, 1.1, 14.0)
SEPIA_MATRIX: Final = (0.393, 0.769, 0.189, 0.0, 0.349, 0.686, 0.168, 0.0, 0.272, 0.534, 0.131, 0.0)
ZOOM_DEFAULT: Final = 1.5
ZOOM_MAX: Final = 8.0
SCALE_UP: Final = 1.4
SCALE_DOWN: Final = 0.7

# --------------------------------------------------------------------------- vocabulary

ARTICLES: Final = frozenset(
    {
        "a",
        "an",
        "the",
        "some",
        "another",
        "any",
        "this",
        "that",
        "these",
        "those",
        "its",
        "their",
        "his",
        "her",
        "my",
        "your",
        "our",
        "each",
        "every",
        "all",
        "few",
        "several",
        "many",
    }
)
PREPOSITIONS: Final = frozenset(
    {
        "on",
        "in",
        "at",
        "to",
        "of",
        "with",
        "by",
        "near",
        "next",
        "beside",
        "under",
        "over",
        "above",
        "below",
        "behind",
        "from",
        "into",
        "onto",
        "for",
        "and",
        "or",
        "but",
        "inside",
        "around",
        "between",
        "atop",
        "upon",
        "against",
        "across",
        "along",
        "towards",
        "toward",
        "through",
        "while",
        "where",
        "which",
        "who",
        "wearing",
        "holding",
        "sitting",
        "standing",
        "lying",
        "is",
        "are",
        "was",
        "be",
        "has",
        "have",
        "then",
        "so",
        "as",
        "like",
        "also",
        "plus",
        "it",
        "them",
        "they",
        "there",
        "here",
        "very",
        "more",
        "less",
        "than",
        "too",
        "just",
        "only",
        "now",
        "please",
        "should",
        "would",
        "could",
        "can",
        "will",
        "let",
        "same",
        "without",
        "not",
    }
)
VERBS: Final = frozenset(
    {
        "add",
        "put",
        "place",
        "insert",
        "draw",
        "include",
        "write",
        "paint",
        "show",
        "create",
        "generate",
        "make",
        "render",
        "give",
        "remove",
        "delete",
        "erase",
        "move",
        "shift",
        "replace",
        "change",
        "turn",
        "rotate",
        "flip",
        "mirror",
        "crop",
        "zoom",
        "keep",
        "leave",
        "set",
        "apply",
        "convert",
        "get",
        "take",
        "swap",
        "want",
        "need",
        "see",
        "depict",
        "illustrate",
        "design",
        "produce",
        "edit",
        "use",
        "colour",
        "color",
        "recolor",
        "recolour",
        "tint",
        "slide",
        "drag",
        "resize",
        "scale",
        "enlarge",
        "shrink",
        "type",
        "label",
        "preserve",
        "retain",
        "maintain",
        "blur",
        "sharpen",
        "brighten",
        "darken",
        "invert",
        "increase",
        "decrease",
        "reduce",
        "boost",
        "dye",
        "photograph",
        "photo",
    }
)
ADD_VERBS: Final = frozenset(
    {
        "add",
        "put",
        "place",
        "insert",
        "draw",
        "include",
        "paint",
        "show",
        "give",
        "sketch",
        "introduce",
        "create",
        "stick",
    }
)
TEXT_VERBS: Final = frozenset(
    {
        "write",
        "text",
        "caption",
        "label",
        "title",
        "type",
        "sign",
        "says",
        "say",
        "reading",
        "reads",
    }
)
SCENE_VERBS: Final = frozenset(
    {
        "draw",
        "show",
        "create",
        "generate",
        "make",
        "render",
        "paint",
        "depict",
        "illustrate",
        "design",
        "produce",
    }
)
POSITION_WORDS: Final = frozenset(
    {
        "left",
        "right",
        "top",
        "bottom",
        "center",
        "centre",
        "middle",
        "upper",
        "lower",
        "far",
        "corner",
        "side",
        "half",
        "up",
        "down",
        "hand",
        "edge",
    }
)
# Nouns that describe the picture itself, never an object to draw.
META_WORDS: Final = frozenset(
    {
        "image",
        "picture",
        "photo",
        "photograph",
        "pic",
        "scene",
        "background",
        "backdrop",
        "foreground",
        "text",
        "word",
        "words",
        "caption",
        "title",
        "style",
        "lighting",
        "light",
        "colour",
        "color",
        "colours",
        "colors",
        "version",
        "rest",
        "everything",
        "anything",
        "something",
        "nothing",
        "way",
        "look",
        "feel",
        "mood",
        "tone",
        "bit",
        "lot",
        "area",
        "part",
        "frame",
        "shot",
        "view",
        "render",
        "illustration",
        "painting",
        "drawing",
        "portrait",
        "landscape",
        "closeup",
        "detail",
        "details",
        "quality",
        "else",
        "one",
        "composition",
        "photography",
        "art",
        "artwork",
        "gradient",
        "wallpaper",
        "wall",
        "sky",
        "effect",
        "filter",
        "tint",
        "hue",
        "shade",
        "amount",
        "degrees",
        "degree",
        "times",
        "percent",
        "px",
        "pixels",
        "size",
        "canvas",
        "realistic",
        "photorealistic",
        "please",
        "object",
        "objects",
        "thing",
        "things",
        "element",
        "elements",
        "item",
        "items",
        "it",
        "same",
        "original",
        "other",
        "others",
        "all",
        "both",
        "sign",
        "label",
        "sticker",
    }
)
PRONOUNS: Final = frozenset({"it", "its", "them", "this", "that", "they", "itself"})
GLOBAL_WORDS: Final = frozenset(
    {"image", "picture", "photo", "everything", "whole", "entire", "scene", "all", "overall"}
)
NOOP_PREFIXES: Final = (
    "keep",
    "preserve",
    "maintain",
    "leave",
    "retain",
    "don't",
    "dont",
    "do not",
    "without",
    "but keep",
    "everything else",
    "nothing else",
    "no other",
    "make sure",
    "ensure",
    "same",
    "otherwise",
    "the rest",
)
POLITE_PREFIXES: Final = re.compile(
    r"^(?:(?:please|now|also|then|and|but|ok|okay|next|finally|can you|could you|would you|"
    r"i want you to|i'd like you to|i would like you to|let's|lets)\b[\s,]*)+"
)
NOUN_IRREGULAR: Final[dict[str, str]] = {
    "leaves": "leaf",
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "knives": "knife",
    "wolves": "wolf",
    "shelves": "shelf",
    "glasses": "glasses",
    "sunglasses": "sunglasses",
    "cactus": "cactus",
    "grass": "grass",
    "glass": "glass",
    "bus": "bus",
    "dress": "dress",
}

FILTER_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    ("grayscale", r"gr[ae]y ?scale|monochrome|desaturate completely|colou?rless|no colou?rs?|noir"),
    ("sepia", r"sepia|vintage|old[- ]fashioned|antique|old photo(?:graph)?|retro"),
    ("invert", r"invert(?:ed)?|negative|inverse"),
    ("blur", r"blur(?:red|ry)?|soften|out of focus|defocus(?:ed)?|bokeh|dreamy|hazy|misty"),
    ("sharpen", r"sharpen|sharper|crisper|crisp|more detail(?:ed)?|clearer|in focus"),
    (
        "brighter",
        r"bright(?:er|en)|lighter|lighten|more light|daytime|well[- ]lit|exposure up|"
        r"overexpos\w*|luminous",
    ),
    ("darker", r"dark(?:er|en)|dimmer|dim|moodier|moody|less light|underexpos\w*|shadowy|gloomy"),
    ("night", r"night(?:time)?|nocturnal|moonlit"),
    (
        "warmer",
        r"warm(?:er|th)?|golden|sunset|sunrise|morning light|golden hour|cozier|cosy|cozy|"
        r"glow(?:ing)?|orange tint|sunlit|sunny",
    ),
    ("cooler", r"cool(?:er)?|cold(?:er)?|icy|evening|blue hour|bluish|chilly|winter(?:y)?|frosty"),
    (
        "contrast_up",
        r"more contrast|higher contrast|increase (?:the )?contrast|boost (?:the )?"
        r"contrast|dramatic|punchier|punchy|contrasty",
    ),
    (
        "contrast_down",
        r"less contrast|lower contrast|reduce (?:the )?contrast|decrease (?:the )?"
        r"contrast|flatter|washed[- ]out",
    ),
    (
        "saturate",
        r"more saturat\w*|saturate|saturated|vibrant|vivid|more colou?rful|colou?rful|"
        r"punch up (?:the )?colou?rs",
    ),
    ("desaturate", r"desaturat\w*|less saturat\w*|muted|pastel|faded|dull"),
    ("pixelate", r"pixel(?:ate|ated|ized|ised|ise|ize)?(?: art)?|8[- ]bit|mosaic"),
    ("posterize", r"posteri[sz]e\w*|cartoon\w*|comic(?: book)?|pop art"),
    ("vignette", r"vignett\w*"),
    ("sketch", r"sketch(?:ed|y)?|pencil|line drawing|line art|outline"),
    ("emboss", r"emboss\w*|engrav\w*|relief"),
)
FILTER_REGEX: Final = re.compile(
    "|".join(f"(?P<{name}>\\b(?:{pattern})\\b)" for name, pattern in FILTER_PATTERNS)
)
FILTER_DESCRIPTIONS: Final[dict[str, str]] = {
    "grayscale": "applied grayscale",
    "sepia": "applied sepia",
    "invert": "inverted colours",
    "blur": "applied blur",
    "sharpen": "sharpened",
    "brighter": "made brighter",
    "darker": "made darker",
    "night": "made darker and cooler (night)",
    "warmer": "made warmer",
    "cooler": "made cooler",
    "contrast_up": "increased contrast",
    "contrast_down": "reduced contrast",
    "saturate": "increased saturation",
    "desaturate": "reduced saturation",
    "pixelate": "pixelated",
    "posterize": "posterized",
    "vignette": "added vignette",
    "sketch": "turned into a pencil sketch",
    "emboss": "embossed",
}

# --------------------------------------------------------------------------- metadata & replay

MAX_EVENTS: Final = 64
MAX_META_CHARS: Final = 200_000
MAX_STOPS: Final = 8
MAX_COORD: Final = 1e6
# Replaying a history renders at its largest size; bounded because the history comes from clients.
MAX_REPLAY_PIXELS: Final = 20_000_000
TRANSPOSE_VALUES: Final = frozenset(int(t) for t in Image.Transpose)
MASK_DILATE: Final = 5
QUOTE_POSITION_REACH: Final = 5
CENTRE_SEARCH: Final = 0.2
ZOOM_SLIGHT: Final = 1.2
ANCHOR_SCALE: Final = 0.6
ANCHOR_REACH: Final = 3
# "a hat on the cat": the new object is centred this far down the anchor (0 = its top edge).
ANCHOR_ON_LEVEL: Final = 0.02
REMOVE_VERBS: Final = frozenset({"remove", "delete", "erase", "eliminate", "clear"})
REMOVE_REGEX: Final = re.compile(r"(?:get rid of|take (?:out|away)|cut out)\b")
REPLACE_REGEX: Final = re.compile(
    r"\b(?:change|turn) (?:the |it )?\w+(?: \w+)? (?:into|to) (?:a|an)\b"
)
MOVE_VERBS: Final = frozenset({"move", "shift", "slide", "drag", "reposition", "relocate", "push"})
SCALE_UP_WORDS: Final = frozenset({"bigger", "larger", "enlarge", "taller"})
SCALE_DOWN_WORDS: Final = frozenset({"smaller", "tinier", "shrink", "shorter"})
ROTATE_HINTS: Final = frozenset(
    {
        "clockwise",
        "counterclockwise",
        "anticlockwise",
        "sideways",
        "degrees",
        "left",
        "right",
        "90",
        "180",
        "270",
    }
)
COUNTER_CLOCKWISE: Final = frozenset({"counterclockwise", "anticlockwise", "ccw", "left"})
ZOOM_WORDS: Final = frozenset({"zoom", "crop", "cropped", "closer", "closeup"})
ROTATE_NOTES: Final[dict[float, str]] = {
    90.0: "rotated 90 degrees clockwise",
    180.0: "rotated 180 degrees",
    270.0: "rotated 90 degrees counter-clockwise",
}
ANCHOR_WORDS: Final = frozenset(
    {"on", "atop", "onto", "to", "beside", "next", "near", "above", "below", "under"}
)
RECOLOUR_VERBS: Final = frozenset(
    {
        "make",
        "turn",
        "change",
        "colour",
        "color",
        "recolor",
        "recolour",
        "paint",
        "dye",
        "tint",
        "set",
    }
)

QUOTE_REGEX: Final = re.compile(
    r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d|\u2018([^\u2019]+)\u2019|(?<![\w])'([^']+)'(?![\w])"
)
QUOTE_TOKEN: Final = "zzquote"
WORD_REGEX: Final = re.compile(rf"{QUOTE_TOKEN}\d+|\d+(?:\.\d+)?|[a-z]+(?:'[a-z]+)?")
SENTENCE_SPLIT: Final = re.compile(r"(?<!\d)[.!?;]+(?!\d)|\n+")
SOFT_SPLIT: Final = re.compile(r"\s*(?:,|\band then\b|\bthen\b|\band\b|\bbut\b|\balso\b)\s*")
NUMBER_REGEX: Final = re.compile(r"(\d+(?:\.\d+)?)")
