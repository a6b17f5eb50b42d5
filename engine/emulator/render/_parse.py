"""Prompt parsing: quotes, tokens, clauses, colours, backgrounds and object specs."""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.emulator.render._drawing import KINDS, NOUN_ALIASES
from engine.emulator.render._model import _Background, _colour_at, _colours_in, _shade, _Spec
from engine.emulator.render._vocabulary import (
    ARTICLES,
    BACKGROUND_HEADS,
    BACKGROUND_SCENES,
    COLOUR_BG_TOP_LIGHTEN,
    COLOURS,
    COUNT_WORDS,
    DARKER_WORDS,
    FILTER_REGEX,
    LIGHTER_WORDS,
    MAX_COPIES,
    MAX_OBJECTS,
    META_WORDS,
    NOOP_PREFIXES,
    NOUN_IRREGULAR,
    PLURAL_DEFAULT_COUNT,
    POLITE_PREFIXES,
    POSITION_WORDS,
    POSITIONS,
    PREPOSITIONS,
    PRONOUNS,
    QUOTE_REGEX,
    QUOTE_TOKEN,
    RGB,
    SCENE_VERBS,
    SCENE_WORDS,
    SENTENCE_SPLIT,
    SIZE_WORDS,
    SOFT_SPLIT,
    TEXT_MAX_CHARS,
    TEXT_VERBS,
    VAGUE_COUNT_WORDS,
    VERBS,
    WORD_REGEX,
    Pos,
)

# =========================================================================== text parsing


def _extract_quotes(text: str) -> tuple[str, list[str]]:
    """Replace quoted strings by placeholder words so splitting and tokenising skip them."""
    quotes: list[str] = []

    def repl(match: re.Match[str]) -> str:
        quoted = next(g for g in match.groups() if g is not None)
        quotes.append(quoted.strip()[:TEXT_MAX_CHARS])
        return f" {QUOTE_TOKEN}{len(quotes) - 1} "

    return QUOTE_REGEX.sub(repl, text), quotes


def _restore_quotes(text: str, quotes: Sequence[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"'{quotes[index]}'" if index < len(quotes) else match.group(0)

    return re.sub(rf"\s*{QUOTE_TOKEN}(\d+)\s*", lambda m: f" {repl(m)} ", text).strip()


def _quote_index(token: str) -> int | None:
    if token.startswith(QUOTE_TOKEN) and token[len(QUOTE_TOKEN) :].isdigit():
        return int(token[len(QUOTE_TOKEN) :])
    return None


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(
        r"\bblack[\s-]*(?:and|&|n)[\s-]*white\b|\bb ?& ?w\b|\bb/w\b", " monochrome ", text
    )
    text = re.sub(r"\bgray[\s-]scale\b|\bgrey[\s-]scale\b", " grayscale ", text)
    text = re.sub(r"\bon top of\b", " atop ", text)
    text = text.replace("%", " percent ")
    return text.replace("-", " ")


def _tokens(text: str) -> list[str]:
    return WORD_REGEX.findall(_normalise(text))


def _split_clauses(text: str) -> list[str]:
    """Split an instruction into clauses; commas/'and' split only before a new verb or filter."""
    clauses: list[str] = []
    for sentence in SENTENCE_SPLIT.split(_normalise(text)):
        parts = SOFT_SPLIT.split(sentence)
        current = ""
        for part in parts:
            part = part.strip()
            if not part:
                continue
            words = WORD_REGEX.findall(POLITE_PREFIXES.sub("", part))
            starts_new = bool(words) and (
                words[0] in VERBS
                or FILTER_REGEX.match(" ".join(words)) is not None
                or part.startswith(NOOP_PREFIXES)
            )
            if current and not starts_new:
                current = f"{current} and {part}" if _has_objects(words) else f"{current} {part}"
            else:
                if current:
                    clauses.append(current)
                current = part
        if current:
            clauses.append(current)
    return [POLITE_PREFIXES.sub("", c).strip() for c in clauses if c.strip()]


def _has_objects(words: Sequence[str]) -> bool:
    return any(_kind_of(w) is not None for w in words) or any(w in ARTICLES for w in words)


def _singular(word: str) -> str:
    if word in NOUN_IRREGULAR:
        return NOUN_IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _kind_of(word: str) -> str | None:
    """Canonical drawable kind for a noun (aliases and plurals folded), else None."""
    if word in COLOURS or word in META_WORDS:
        return None
    for candidate in (word, _singular(word)):
        if candidate in NOUN_ALIASES:
            return NOUN_ALIASES[candidate]
        if candidate in KINDS:
            return candidate
    return None


def _is_boundary(token: str) -> bool:
    return (
        token in ARTICLES
        or token in PREPOSITIONS
        or token in VERBS
        or token in POSITION_WORDS
        or token in COUNT_WORDS
        or token in PRONOUNS
        or token.isdigit()
        or token in TEXT_VERBS
        or _quote_index(token) is not None
    )


def _parse_background(tokens: Sequence[str], consumed: set[int]) -> _Background | None:
    """Find 'blue background', 'background of red and gold', 'sunset', 'at night' etc."""
    for i, token in enumerate(tokens):
        if token not in BACKGROUND_HEADS:
            continue
        colours: list[RGB] = []
        used: set[int] = {i}
        j = i - 1
        while j >= 0 and (
            tokens[j] in COLOURS
            or tokens[j] in ("and", "to", "soft", "plain", "solid")
            or tokens[j] in LIGHTER_WORDS
            or tokens[j] in DARKER_WORDS
        ):
            j -= 1
        before = [(c, k) for c, k in _colours_in(tokens[j + 1 : i])]
        colours.extend(c for c, _ in before)
        used.update(range(j + 1, i))
        if not colours:
            k = i + 1
            while k < len(tokens) and tokens[k] in (
                "is",
                "of",
                "in",
                "colour",
                "color",
                "should",
                "be",
                "a",
                "to",
            ):
                k += 1
            m = k
            while m < len(tokens) and (
                tokens[m] in COLOURS
                or tokens[m] in ("and", "to")
                or tokens[m] in LIGHTER_WORDS
                or tokens[m] in DARKER_WORDS
            ):
                m += 1
            after = _colours_in(tokens[k:m])
            colours.extend(c for c, _ in after)
            if after:
                used.update(range(i + 1, m))
        if colours:
            consumed.update(used)
            names = " and ".join(tokens[k] for k in sorted(used) if tokens[k] in COLOURS)
            heads = ("background", "backdrop", "wall", "wallpaper")
            return _colour_background(colours, names if token in heads else f"{names} {token}")
    for i, token in enumerate(tokens):
        if token in SCENE_WORDS:
            if token == "outer" and (i + 1 >= len(tokens) or tokens[i + 1] != "space"):
                continue
            consumed.add(i)
            if i + 1 < len(tokens) and tokens[i + 1] in BACKGROUND_HEADS | {
                "scene",
                "setting",
                "light",
            }:
                consumed.add(i + 1)
            name = SCENE_WORDS[token]
            return _Background(name, BACKGROUND_SCENES[name], stars=name in ("night", "space"))
    return None


def _colour_background(colours: Sequence[RGB], name: str) -> _Background:
    if len(colours) == 1:
        c = colours[0]
        return _Background(name, ((0.0, _shade(c, COLOUR_BG_TOP_LIGHTEN)), (1.0, c)))
    step = 1.0 / (len(colours) - 1)
    return _Background(name, tuple((i * step, c) for i, c in enumerate(colours)))


def _extract_objects(
    tokens: Sequence[str], consumed: set[int], *, openers: frozenset[str] = frozenset()
) -> list[_Spec]:
    """Known nouns with their modifiers, then unknown nouns after an article/number/verb."""
    used = set(consumed)
    specs: list[_Spec] = []
    n = len(tokens)
    for i, token in enumerate(tokens):
        kind = _kind_of(token)
        if i in used or kind is None:
            continue
        if i + 1 < n and i + 1 not in used and _kind_of(tokens[i + 1]) is not None:
            continue  # compound noun ("tree house", "eucalyptus sprig"): the last word is the head
        if (
            i >= 2
            and tokens[i - 1] == "of"
            and _is_content(tokens[i - 2])
            and not _is_boundary(tokens[i - 2])
        ):
            continue  # "bowl of fruit": part of the noun before "of"
        start = i
        while start - 1 >= 0 and start - 1 not in used and not _is_boundary(tokens[start - 1]):
            start -= 1
        spec = _make_spec(tokens, kind, start, i, used)
        specs.append(spec)
        used.update(range(spec.start, spec.end))
    opener_words = ARTICLES | frozenset(COUNT_WORDS) | openers
    for i, token in enumerate(tokens):
        if i in used or (token not in opener_words and not token.isdigit()):
            continue
        j = i + 1
        while j < n and j not in used and not _is_boundary(tokens[j]):
            j += 1
        content = [k for k in range(i + 1, j) if _is_content(tokens[k])]
        # "the quick brown fox jumps over": a trailing -s word before a preposition is a verb.
        while (
            len(content) > 1
            and tokens[content[-1]].endswith("s")
            and j < n
            and tokens[j] in PREPOSITIONS
        ):
            j = content.pop()
        if not content:
            continue
        head = content[-1]
        if FILTER_REGEX.fullmatch(tokens[head]) or tokens[head] in SCENE_WORDS:
            continue
        spec = _make_spec(tokens, None, i + 1, head, used, count_at=i)
        specs.append(spec)
        used.update(range(i, spec.end))
    specs.sort(key=lambda s: s.start)
    # A picture holds a few dozen objects, not thousands: the cap keeps placement (which ranks
    # objects per position phrase) linear in the prompt's length.
    return specs[:MAX_OBJECTS]


def _is_content(token: str) -> bool:
    return not (
        token in META_WORDS
        or token in COLOURS
        or token in SIZE_WORDS
        or token in LIGHTER_WORDS
        or token in DARKER_WORDS
        or len(token) < 2
        or token.isdigit()
    )


def _make_spec(
    tokens: Sequence[str],
    kind: str | None,
    start: int,
    head: int,
    used: set[int],
    count_at: int | None = None,
) -> _Spec:
    mods = list(range(start, head))
    colour: RGB | None = None
    scale = 1.0
    label_words: list[str] = []
    skip: set[int] = set()
    for k in mods:
        hit = _colour_at(tokens, k)
        if hit is not None and all(u >= start for u in hit[1]):
            colour = hit[0]
            skip.update(hit[1])
    for k in mods:
        if k in skip:
            continue
        if tokens[k] in SIZE_WORDS:
            scale *= SIZE_WORDS[tokens[k]]
        elif kind is None or tokens[k] not in LIGHTER_WORDS | DARKER_WORDS:
            label_words.append(tokens[k])
    if colour is not None and tokens[head] not in ("white", "black"):
        label_words = [w for w in label_words if w not in COLOURS]
    count = 1
    counter = count_at if count_at is not None else start - 1
    has_count = False
    if 0 <= counter < len(tokens) and counter not in used:
        word = tokens[counter]
        if word.isdigit():
            count, has_count = int(word), True
        elif word in COUNT_WORDS:
            count, has_count = COUNT_WORDS[word], True
    noun = tokens[head]
    singular = _singular(noun)
    if singular == noun and counter >= 0 and tokens[counter] in VAGUE_COUNT_WORDS:
        count = 1  # "some sparkle": a mass noun, one thing
    elif singular != noun and not has_count:
        count = PLURAL_DEFAULT_COUNT
    end = head + 1
    tail: list[str] = []
    if (
        end + 1 < len(tokens)
        and tokens[end] == "of"
        and end + 1 not in used
        and _is_content(tokens[end + 1])
        and not _is_boundary(tokens[end + 1])
    ):  # "cup of coffee", "sprig of eucalyptus": one object, not two
        tail = ["of", tokens[end + 1]]
        end += 2
    if colour is not None and kind is not None and kind in KINDS and KINDS[kind].geometric:
        label_words.insert(0, _colour_name(tokens, mods))
    label = " ".join(w for w in [*label_words, singular, *tail] if w)
    return _Spec(kind, label, colour, scale, max(1, min(MAX_COPIES, count)), start, end)


def _colour_name(tokens: Sequence[str], mods: Sequence[int]) -> str:
    names = [
        tokens[k] for k in mods if tokens[k] in COLOURS or tokens[k] in LIGHTER_WORDS | DARKER_WORDS
    ]
    return " ".join(names)


def _fallback_noun(tokens: Sequence[str], consumed: set[int]) -> list[_Spec]:
    """For article-less prompts like 'spaceship': the last content word becomes a labelled box."""
    for i in range(len(tokens) - 1, -1, -1):
        token = tokens[i]
        if i in consumed or _is_boundary(token) or not _is_content(token):
            continue
        if FILTER_REGEX.fullmatch(token) or token in SCENE_WORDS or token in SCENE_VERBS:
            continue
        return [_Spec(None, _singular(token), None, 1.0, 1, i, i + 1)]
    return []


def _find_positions(tokens: Sequence[str]) -> list[tuple[int, Pos]]:
    found: list[tuple[int, Pos]] = []
    i = 0
    while i < len(tokens):
        pair = f"{tokens[i]} {tokens[i + 1]}" if i + 1 < len(tokens) else ""
        if pair in POSITIONS:
            found.append((i + 1, POSITIONS[pair]))
            i += 2
            continue
        if tokens[i] in POSITIONS:
            found.append((i, POSITIONS[tokens[i]]))
        i += 1
    return found


def _merge_pos(a: Pos, b: Pos) -> Pos:
    return (b[0] if b[0] is not None else a[0], b[1] if b[1] is not None else a[1])


def _token_distance(spec: _Spec, index: int) -> tuple[int, int]:
    """How far token index is from a spec's words; ties prefer the spec before the index."""
    if index >= spec.end:
        return (index - spec.end + 1, 0)
    if index < spec.start:
        return (spec.start - index, 1)
    return (0, 0)


def _assign_positions(tokens: Sequence[str], specs: list[_Spec]) -> None:
    """Give each position phrase to the nearest object (ties go to the one before it)."""
    if not specs:
        return
    for index, pos in _find_positions(tokens):
        ranked = sorted((_token_distance(s, index), k) for k, s in enumerate(specs))
        candidates = [specs[k] for _, k in ranked]
        target = next((s for s in candidates if s.pos == (None, None)), candidates[0])
        target.pos = _merge_pos(target.pos, pos)


def _assign_relations(tokens: Sequence[str], specs: list[_Spec]) -> None:
    """'X on (top of) Y' puts X on Y; 'X wearing Y' puts Y on X."""
    for ia in range(len(specs) - 1):
        ib = ia + 1
        a, b = specs[ia], specs[ib]
        between = set(tokens[a.end : b.start])
        if between & {"on", "onto", "atop", "upon"} and a.pos == (None, None):
            a.on = ib
        elif "wearing" in between and b.pos == (None, None):
            b.on = ia
