"""Poems on demand: the shapes behind `--form`, `--acrostic`, `--rhyme`, `--rhyme-scheme` and `--tones`.

Each shape is a `CharMachine` (lstmgen.constraints) that the sampler turns into masks over the next
token, so every sample has the shape and no sample reaches a dead end. Two languages:

- **Chinese** (a model whose vocabulary is mostly Han characters, such as the built-in `tang`): a poem
  is a title line, then lines of two verses, `，` after odd verses and `。` (then a line break) after even
  ones, as in the corpus. `--form` fixes the number of verses and characters per verse (五言绝句 4×5,
  七言绝句 4×7, 五言律诗 8×5, 七言律诗 8×7); `--acrostic` the first character of each verse; `--rhyme`
  makes the even verses end on distinct characters of one rhyme group of the 中华新韵 (14 groups, read
  from the character's first pypinyin reading); `--tones` makes the verses follow one of the four
  standard level/oblique (平仄) patterns of the form, on the positions "二四六分明" fixes (the 2nd, 4th,
  6th and last characters; the 1st, 3rd and 5th are free).
- **English** (any other vocabulary): a poem is a number of lines; `--acrostic` makes line i begin with
  the i-th letter of TEXT (one word) or the i-th word (several words); `--rhyme-scheme ABAB` (or
  `--rhyme`, couplets) makes lines of one letter end on distinct words that rhyme by the CMU
  pronouncing dictionary (the `pronouncing` package: same stressed vowel and everything after it).

`check_chinese`, `chinese_rhymes`, `chinese_tones` and `check_english` are the checkers the tests and
benchmarks/poems.py apply to samples and to the corpus alike.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .config import POEM_FORMS, SamplingOptions
from .constraints import CharMachine, TokenConstraint
from .errors import LstmgenError
from .options import ref
from .tokenizer import Tokenizer

# -- forms -------------------------------------------------------------------------------------------

#: Form name -> (verses, characters per verse). ASCII aliases are the names' pinyin.
FORMS: dict[str, tuple[int, int]] = {"五言绝句": (4, 5), "七言绝句": (4, 7), "五言律诗": (8, 5), "七言律诗": (8, 7)}
FORM_ALIASES = {"wujue": "五言绝句", "qijue": "七言绝句", "wulv": "五言律诗", "qilv": "七言律诗"}
assert (*FORMS, *FORM_ALIASES) == POEM_FORMS

#: The longest title a Chinese poem may have (99 % of the corpus's titles have at most 24 characters).
TITLE_MAX = 24
COMMA, STOP, NEWLINE = "，", "。", "\n"
#: Han characters: CJK unified ideographs, extension A, compatibility ideographs, extensions B-G.
HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
_PUNCTUATION_POINTS = ((ord(COMMA), ord(COMMA)), (ord(STOP), ord(STOP)))

#: Options as messages name them (the keyword in Python, the flag on the command line), from their declarations.
FORM_REF, ACROSTIC_REF, RHYME_REF, SCHEME_REF, TONES_REF, MAX_TOKENS_REF = (
    ref(SamplingOptions, name) for name in ("form", "acrostic", "rhyme", "rhyme_scheme", "tones", "max_tokens")
)
INSTALL = "pip install 'lstmgen[poetry]'"


def form_shape(name: str) -> tuple[str, int, int]:
    """(canonical name, verses, characters per verse) of a form name or alias."""
    canonical = FORM_ALIASES.get(name, name)
    verses, length = FORMS[canonical]
    return canonical, verses, length


def is_han(char: str) -> bool:
    if len(char) != 1:
        return False
    point = ord(char)
    return any(low <= point <= high for low, high in HAN_RANGES)


# -- 中华新韵: rhyme groups and tones from pypinyin -------------------------------------------------------

#: The 14 rhyme groups of the 中华新韵 (中华诗词学会), each the pinyin finals it holds.
RHYME_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("麻", ("a", "ia", "ua")),
    ("波", ("o", "e", "uo")),
    ("皆", ("ie", "ve", "ê")),
    ("开", ("ai", "uai")),
    ("微", ("ei", "uei")),
    ("豪", ("ao", "iao")),
    ("尤", ("ou", "iou")),
    ("寒", ("an", "ian", "uan", "van")),
    ("文", ("en", "in", "uen", "vn")),
    ("唐", ("ang", "iang", "uang")),
    ("庚", ("eng", "ing", "ueng", "ong", "iong")),
    ("齐", ("i", "er", "v")),
    ("支", ("-i",)),  # the apical vowel of zhi chi shi ri zi ci si
    ("姑", ("u",)),
)
_FINAL_GROUP = {final: index for index, (_, finals) in enumerate(RHYME_GROUPS) for final in finals}
_APICAL_INITIALS = frozenset({"zh", "ch", "sh", "r", "z", "c", "s"})
#: Tone classes: 平 (level: Mandarin tones 1 and 2) and 仄 (oblique: tones 3 and 4); 0 = unknown (no reading, neutral tone).
LEVEL, OBLIQUE = 1, 2


def _pypinyin(ref: str) -> Any:
    try:
        import pypinyin
        from pypinyin.contrib import tone_convert
    except ImportError:
        raise LstmgenError(f"{ref} needs the pypinyin package: {INSTALL}") from None
    return pypinyin, tone_convert


@functools.cache
def reading(char: str) -> tuple[int, int]:
    """(tone class, rhyme group index) of a Han character by its first pypinyin reading; (0, -1) when unknown.

    The first reading is pypinyin's most common one for the character alone (no phrase context)."""
    if len(char) != 1 or not is_han(char):
        return 0, -1
    pypinyin, tone_convert = _pypinyin(f"{RHYME_REF} and {TONES_REF}")
    syllable = pypinyin.lazy_pinyin(char, style=pypinyin.Style.TONE3, neutral_tone_with_five=True)[0]
    if not syllable or not syllable[-1].isdigit():
        return 0, -1
    tone, base = int(syllable[-1]), syllable[:-1]
    final = tone_convert.to_finals(base, strict=True)
    if final == "i" and tone_convert.to_initials(base, strict=True) in _APICAL_INITIALS:
        final = "-i"
    tone_class = LEVEL if tone in (1, 2) else OBLIQUE if tone in (3, 4) else 0
    return tone_class, _FINAL_GROUP.get(final, -1)


# -- 平仄 patterns -------------------------------------------------------------------------------------

#: The four line patterns of five-character regulated verse (p = 平 level, z = 仄 oblique) ...
_LINES5 = {"A": "zzppz", "B": "ppzzp", "C": "pppzz", "D": "zzzpp"}
#: ... and of seven-character verse: two characters of the other class in front.
_LINES7 = {name: ("pp" if line[0] == "z" else "zz") + line for name, line in _LINES5.items()}
#: The four standard openings (仄起/平起, first verse rhyming or not), continued by 粘 and 对 for eight verses.
_SEQUENCES = {4: ("ABCD", "DBCD", "CDAB", "BDAB"), 8: ("ABCDABCD", "DBCDABCD", "CDABCDAB", "BDABCDAB")}
#: The positions a pattern fixes (0-based): "一三五不论，二四六分明", and the last character.
STRICT = {5: (1, 3, 4), 7: (1, 3, 5, 6)}


def tone_patterns(verses: int, length: int) -> list[list[str]]:
    """Every standard pattern of a form: per verse, per character, "p", "z" or "." (free)."""
    lines = _LINES5 if length == 5 else _LINES7
    patterns = []
    for sequence in _SEQUENCES[verses]:
        pattern = []
        for name in sequence:
            line = lines[name]
            pattern.append("".join(c if i in STRICT[length] else "." for i, c in enumerate(line)))
        patterns.append(pattern)
    return patterns


# -- checkers ------------------------------------------------------------------------------------------

_VERSE = re.compile(f"([^{COMMA}{STOP}]+)([{COMMA}{STOP}])")


def chinese_verses(poem: str) -> list[str] | None:
    """The verses of a poem in the corpus's layout (a title line, then lines `X，X。`), or None when it is not."""
    lines = poem.strip("\n").split("\n")
    if len(lines) < 2 or not lines[0].strip():
        return None
    verses: list[str] = []
    for line in lines[1:]:
        parts = _VERSE.findall(line)
        if not parts or "".join(v + p for v, p in parts) != line:
            return None
        for index, (verse, mark) in enumerate(parts):
            if not all(is_han(c) for c in verse):
                return None
            last = index == len(parts) - 1
            if mark != (STOP if last else COMMA) or len(parts) > 2:
                return None
        verses.extend(v for v, _ in parts)
    return verses


def check_chinese(poem: str, form: str | None = None, acrostic: str = "") -> bool:
    """The exact form: the layout, one verse length (5 or 7), the form's verse count and length when given,
    `，` after odd verses and `。` after even ones, two verses a line, and the acrostic's first characters."""
    verses = chinese_verses(poem)
    if not verses or len({len(v) for v in verses}) != 1 or len(verses[0]) not in (5, 7):
        return False
    lines = poem.strip("\n").split("\n")[1:]
    if any(
        line.count(COMMA) != (1 if i < len(lines) - 1 or len(verses) % 2 == 0 else 0) for i, line in enumerate(lines)
    ):
        return False
    if form is not None:
        _, count, length = form_shape(form)
        if len(verses) != count or len(verses[0]) != length:
            return False
    elif acrostic and len(verses) != len(acrostic):
        return False
    return all(verse.startswith(char) for verse, char in zip(verses, acrostic))


def chinese_rhymes(poem: str) -> bool:
    """The even verses (at least two) end on characters of one 中华新韵 group."""
    verses = chinese_verses(poem)
    if not verses or len(verses) < 4:
        return False
    groups = {reading(v[-1])[1] for v in verses[1::2]}
    return len(groups) == 1 and -1 not in groups


def chinese_tones(poem: str) -> bool:
    """The poem has a regulated shape (4 or 8 verses of 5 or 7) and follows one standard 平仄 pattern."""
    verses = chinese_verses(poem)
    if not verses or len(verses) not in (4, 8) or len({len(v) for v in verses}) != 1 or len(verses[0]) not in (5, 7):
        return False
    classes = [[reading(c)[0] for c in verse] for verse in verses]
    for pattern in tone_patterns(len(verses), len(verses[0])):
        if all(
            want == "." or classes[v][i] == (LEVEL if want == "p" else OBLIQUE)
            for v, line in enumerate(pattern)
            for i, want in enumerate(line)
        ):
            return True
    return False


# -- the Chinese machine ---------------------------------------------------------------------------------

_TITLE, _VERSE_PHASE, _BREAK, _END = 0, 1, 2, 3


class VerseState(NamedTuple):
    phase: int
    verse: int = 0
    pos: int = 0  # title: characters so far; verse: characters of the current verse
    length: int = 0  # characters per verse; 0 until the first verse decides (no form)
    patterns: int = 0  # bit set of the tone patterns still possible (--tones)
    group: int = -1  # the poem's rhyme group, -1 until the first rhyme
    rhymes: frozenset[str] = frozenset()
    space: bool = False  # the title ends with a space


class ChinesePoem(CharMachine):
    """Title line, then `verses` verses of `length` Han characters (5 or 7 when 0), `，`/`。` and line breaks."""

    def __init__(self, verses: int, length: int, acrostic: str, rhyme: bool, tones: bool) -> None:
        self.verses = verses
        self.length = length
        self.acrostic = acrostic
        self.rhyme = rhyme
        self.patterns = tone_patterns(verses, length) if tones else []
        # For each (verse, position) a pattern fixes: the bit set of patterns that want a level / oblique character there.
        self.wants: dict[tuple[int, int], dict[int, int]] = {}
        for bit, pattern in enumerate(self.patterns):
            for v, line in enumerate(pattern):
                for i, want in enumerate(line):
                    if want != ".":
                        spot = self.wants.setdefault((v, i), {LEVEL: 0, OBLIQUE: 0})
                        spot[LEVEL if want == "p" else OBLIQUE] |= 1 << bit
        self.max_growth = 1 if length else 2 * verses + 2
        self.cost = 1
        self.rhyme_count = verses // 2
        self.group_ok = np.zeros(len(RHYME_GROUPS), dtype=bool)

    # binding: per single-character piece, the arrays char_mask works on
    def bind(self, chars: Sequence[str], longest: int = 1, any_char: bool = False) -> None:
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.han = np.array([is_han(c) for c in self.chars], dtype=bool)
        tone = np.zeros(len(self.chars), dtype=np.int8)
        group = np.full(len(self.chars), -1, dtype=np.int8)
        if self.rhyme or self.patterns:
            for i, c in enumerate(self.chars):
                if self.han[i]:
                    tone[i], group[i] = reading(c)
        self.tone, self.group = tone, group
        # A group can hold the poem's rhymes when it has enough distinct characters (level ones, with --tones).
        usable = self.han & (group >= 0) & ((tone == LEVEL) if self.patterns else True)
        counts = np.bincount(group[usable].astype(np.int64), minlength=len(RHYME_GROUPS))
        self.group_ok = counts >= self.rhyme_count
        # Tokens per character in `remaining`: 1 when the vocabulary writes what a poem needs in pieces of their
        # own; else characters are spelled in byte pieces (at most 4 each).
        own = self.han.sum() >= 100 and all(c in self.index for c in (COMMA, STOP, NEWLINE, *self.acrostic))
        if self.patterns:
            own = own and all(np.any(self.han & (tone == t)) for t in (LEVEL, OBLIQUE))
        if self.rhyme:
            own = own and bool(self.group_ok.any())
        if not own and any_char:
            self.cost = 4
            self.max_growth *= 4
            # Every group of the 中华新韵 has hundreds of characters (of either tone), all spelled in bytes.
            self.group_ok[:] = True

    def start(self, prompt: str) -> VerseState:
        return VerseState(_TITLE, length=self.length, patterns=(1 << len(self.patterns)) - 1)

    def _newlines_from(self, verse: int) -> int:
        return sum(1 for v in range(verse, self.verses) if v % 2 == 1 or v == self.verses - 1)

    def remaining(self, s: VerseState) -> int:
        return self.cost * self._characters_left(s) - (self.cost - 1)  # end-of-text is one token

    def _characters_left(self, s: VerseState) -> int:
        """Characters still to write, end-of-text included."""
        length = s.length or 5
        if s.phase == _TITLE:
            body = self.verses * (length + 1) + self._newlines_from(0)
            return (1 if s.pos == 0 else 0) + (1 if s.space else 0) + 1 + body + 1
        if s.phase == _VERSE_PHASE:
            left = length - s.pos if s.length else max(5 - s.pos, 0)
            return left + 1 + (self.verses - s.verse - 1) * (length + 1) + self._newlines_from(s.verse) + 1
        if s.phase == _BREAK:
            return 1 + (self.verses - s.verse - 1) * (length + 1) + self._newlines_from(s.verse + 1) + 1
        return 1

    def can_end(self, s: VerseState) -> bool:
        return s.phase == _END

    def boundary(self, s: VerseState) -> bool:
        return (s.phase == _VERSE_PHASE and s.pos == 0) or s.phase == _END

    def _mark(self, verse: int) -> str:
        return STOP if verse % 2 == 1 or verse == self.verses - 1 else COMMA

    def _ends(self, s: VerseState) -> tuple[bool, bool]:
        """(the verse must end here, it may end here)."""
        at_end = s.pos == (s.length or 7)
        return at_end, at_end or (not s.length and s.pos == 5)

    def _rhyme_spot(self, s: VerseState, length: int) -> bool:
        return self.rhyme and s.verse % 2 == 1 and length > 0 and s.pos == length - 1

    def feed(self, s: VerseState, char: str) -> VerseState | None:
        if s.phase == _TITLE:
            if char == NEWLINE:
                return None if s.pos == 0 or s.space else s._replace(phase=_VERSE_PHASE, pos=0, space=False)
            if char == " ":
                return (
                    None if s.pos == 0 or s.space or s.pos + 1 >= TITLE_MAX else s._replace(pos=s.pos + 1, space=True)
                )
            if is_han(char) and s.pos < TITLE_MAX:
                return s._replace(pos=s.pos + 1, space=False)
            return None
        if s.phase == _BREAK:
            if char != NEWLINE:
                return None
            if s.verse == self.verses - 1:
                return s._replace(phase=_END, pos=0)
            return s._replace(phase=_VERSE_PHASE, verse=s.verse + 1, pos=0)
        if s.phase != _VERSE_PHASE:
            return None
        at_end, may_end = self._ends(s)
        if char in (COMMA, STOP):
            if not may_end or char != self._mark(s.verse):
                return None
            length = s.length or s.pos
            if char == COMMA:
                return s._replace(verse=s.verse + 1, pos=0, length=length)
            return s._replace(phase=_BREAK, length=length)
        if at_end or not is_han(char):
            return None
        length = s.length or (7 if s.pos == 5 else 0)
        if s.pos == 0 and s.verse < len(self.acrostic) and char != self.acrostic[s.verse]:
            return None
        patterns, group, rhymes = s.patterns, s.group, s.rhymes
        spot = self.wants.get((s.verse, s.pos))
        if spot is not None:
            patterns &= spot.get(reading(char)[0], 0)
            if not patterns:
                return None
        if self._rhyme_spot(s, length):
            char_group = reading(char)[1]
            if char_group < 0 or char in rhymes:
                return None
            if group < 0:
                if not self.group_ok[char_group]:
                    return None
                group = char_group
            elif char_group != group:
                return None
            rhymes = rhymes | {char}
        return s._replace(pos=s.pos + 1, length=length, patterns=patterns, group=group, rhymes=rhymes)

    def key(self, s: VerseState) -> Any:
        if s.phase == _TITLE:
            return ("t", s.pos == 0, s.pos + 1 >= TITLE_MAX, s.pos >= TITLE_MAX, s.space)
        if s.phase != _VERSE_PHASE:
            return (s.phase, s.verse == self.verses - 1)
        spot = self.wants.get((s.verse, s.pos))
        classes = None if spot is None else tuple(c for c, bits in spot.items() if bits & s.patterns)
        length = s.length or (7 if s.pos == 5 else 0)
        rhyme = (s.group, s.rhymes) if self._rhyme_spot(s, length) else None
        return ("v", s.verse, s.pos, s.length, classes, rhyme)

    def char_mask(self, s: VerseState) -> np.ndarray:
        mask = np.zeros(len(self.chars), dtype=bool)

        def allow(char: str) -> None:
            if char in self.index:
                mask[self.index[char]] = True

        if s.phase == _TITLE:
            if s.pos < TITLE_MAX:
                mask |= self.han
            if s.pos > 0 and not s.space:
                allow(NEWLINE)
                if s.pos + 1 < TITLE_MAX:
                    allow(" ")
            return mask
        if s.phase == _BREAK:
            allow(NEWLINE)
            return mask
        if s.phase != _VERSE_PHASE:
            return mask
        at_end, may_end = self._ends(s)
        if not at_end:
            if s.pos == 0 and s.verse < len(self.acrostic):
                allow(self.acrostic[s.verse])
            else:
                mask |= self.han
            spot = self.wants.get((s.verse, s.pos))
            if spot is not None:
                classes = [c for c, bits in spot.items() if bits & s.patterns]
                mask &= np.isin(self.tone, classes)
            length = s.length or (7 if s.pos == 5 else 0)
            if self._rhyme_spot(s, length):
                mask &= (self.group == s.group) if s.group >= 0 else (self.group >= 0) & self.group_ok[self.group]
                for char in s.rhymes:
                    if char in self.index:
                        mask[self.index[char]] = False
        if may_end:
            allow(self._mark(s.verse))
        return mask

    def char_ranges(self, s: VerseState) -> Sequence[tuple[int, int]] | None:
        return HAN_RANGES + _PUNCTUATION_POINTS


# -- English: CMU rhymes -----------------------------------------------------------------------------------

_CMU_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")


@functools.lru_cache(maxsize=1)
def cmu_parts() -> dict[str, str]:
    """Every CMU dictionary word (letters, one inner apostrophe) -> its rhyming part (first pronunciation)."""
    try:
        import pronouncing
    except ImportError:
        raise LstmgenError(f"{SCHEME_REF} needs the pronouncing package: {INSTALL}") from None
    pronouncing.init_cmu()
    parts: dict[str, str] = {}
    for word, phones in pronouncing.pronunciations:
        if word not in parts and _CMU_WORD.match(word):
            parts[word] = pronouncing.rhyming_part(phones)
    return parts


#: End words: the CMU words a model's tokenizer writes in the fewest pieces (one, for a subword vocabulary: its
#: training text's common words), at least this many, so that rhymes fall on words the model knows rather than
#: on the dictionary's rarities (`esty`, `k`).
END_WORDS = 300
#: The two-letter words that may end a line (the CMU dictionary also lists syllables and names: `de`, `ne`).
SHORT_WORDS = frozenset(
    ["am", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it", "me", "my", "no", "of", "oh", "on"]
    + ["or", "so", "to", "up", "us", "we", "ye"]
)


class _Rhymes:
    """The end words a model may rhyme on, by rhyming part."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        every = cmu_parts()
        words = sorted(w for w in every if len(w) > 2 or w in SHORT_WORDS)
        pieces = [len(ids) for ids in tokenizer.encode_batch([" " + w for w in words])]
        limit = 1
        while sum(p <= limit for p in pieces) < min(END_WORDS, len(words)):
            limit += 1
        self.part = {w: every[w] for w, p in zip(words, pieces) if p <= limit}
        classes: dict[str, list[str]] = {}
        for word, part in self.part.items():
            classes.setdefault(part, []).append(word)
        self.classes = {part: sorted(words) for part, words in classes.items()}
        self._anchors: dict[tuple[int, frozenset[str]], _Words] = {}
        self._sets: dict[str, _Words] = {}

    def anchors(self, size: int, taken: frozenset[str] = frozenset()) -> _Words:
        """Words whose rhyme class has at least `size` members and is none of the `taken` rhyming parts."""
        key = (size, taken)
        if key not in self._anchors:
            self._anchors[key] = _Words(
                [w for part, ws in self.classes.items() if len(ws) >= size and part not in taken for w in ws]
            )
        return self._anchors[key]

    def words(self, part: str) -> _Words:
        if part not in self._sets:
            self._sets[part] = _Words(self.classes.get(part, []))
        return self._sets[part]


class _Words:
    """A set of words, sorted (prefix search) and by length (shortest unused)."""

    def __init__(self, words: list[str]) -> None:
        self.sorted = sorted(words)
        self.members = frozenset(words)
        self.by_length = sorted(words, key=len)

    def shortest(self, used: frozenset[str]) -> int | None:
        for word in self.by_length:
            if word not in used:
                return len(word)
        return None

    def completes(self, prefix: str, room: int, used: frozenset[str]) -> bool:
        """Some unused word begins with `prefix` and is at most `room` characters longer."""
        start = bisect.bisect_left(self.sorted, prefix)
        for word in self.sorted[start:]:
            if not word.startswith(prefix):
                return False
            if len(word) - len(prefix) <= room and word not in used:
                return True
        return False


_RHYMES: dict[int, _Rhymes] = {}


def end_words(tokenizer: Tokenizer) -> _Rhymes:
    """The end words of a model's tokenizer (computed once per tokenizer)."""
    if id(tokenizer) not in _RHYMES:
        _RHYMES.clear()
        _RHYMES[id(tokenizer)] = _Rhymes(tokenizer)
    return _RHYMES[id(tokenizer)]


def _word_char(char: str) -> bool:
    return char.isalpha() or char == "'"


def _strip_punctuation(chunk: str) -> str:
    start, end = 0, len(chunk)
    while start < end and not chunk[start].isalpha():
        start += 1
    while end > start and not chunk[end - 1].isalpha():
        end -= 1
    return chunk[start:end]


def last_word(line: str) -> str:
    """A line's end word, lower-cased: its last space-separated chunk without the punctuation around it, when
    that is a word (letters, inner apostrophes); "" otherwise (`scrup.herd`, `divines;irk` end on no word)."""
    chunks = line.split()
    word = _strip_punctuation(chunks[-1]) if chunks else ""
    return word.lower() if word and all(_word_char(c) for c in word) else ""


def check_english(text: str, acrostic: str = "", scheme: str = "", lead: bool = False) -> bool:
    """The lines of `text` (after the line the prompt began, when `lead`) begin with the acrostic's letters (as
    written) or words (either case), and the lines of each repeated letter of `scheme` end on distinct words of one
    CMU rhyming part, a part no other letter rhymes on."""
    lines = text.split("\n")
    if lead:
        lines = lines[1:]
    if lines and lines[-1] == "":
        lines.pop()
    units = acrostic_units(acrostic)
    count = len(units) or len(scheme)
    if len(lines) != count or not all(lines):
        return False
    for line, unit in zip(lines, units):
        if not (line.startswith(unit) if len(unit) == 1 else line.lower().startswith(unit.lower())):
            return False
        if len(unit) > 1 and len(line) > len(unit) and _word_char(line[len(unit)]):
            return False
    if scheme:
        rhyming = cmu_parts()
        ends: dict[str, list[str]] = {}
        for line, letter in zip(lines, scheme):
            ends.setdefault(letter, []).append(last_word(line))
        seen: set[str | None] = set()
        for words in ends.values():
            parts = {rhyming.get(w) for w in words}
            if len(words) > 1 and (None in parts or len(parts) != 1 or len(set(words)) != len(words) or parts & seen):
                return False
            seen |= parts if len(words) > 1 else set()
    return True


def acrostic_units(text: str) -> list[str]:
    """An English acrostic's units: its words when it has several, else its letters.

    A letter must begin its line as written (`LOVE`: L, O, V, E); a word in either case (`to be` or `To Be`)."""
    words = text.split()
    return words if len(words) > 1 else [c for c in text if not c.isspace()]


class LineState(NamedTuple):
    line: int  # the current line; -1 while finishing the prompt's last line
    text: str = ""
    anchors: tuple[tuple[str, str], ...] = ()  # (scheme letter, rhyming part) of letters whose first line ended
    used: frozenset[str] = frozenset()  # end words rhymed on


class EnglishLines(CharMachine):
    """`count` non-empty lines of at most `line_max` characters, with acrostic starts and a rhyme scheme."""

    #: The prompt is context: the poem's lines start at the next line start.
    reads_prompt = False

    def __init__(self, count: int, units: list[str], scheme: str, line_max: int, rhymes: _Rhymes | None) -> None:
        self.count = count
        self.units = units
        self.scheme = scheme
        self.line_max = line_max
        self.rhymes = rhymes
        self.longest = 1
        self.own: frozenset[str] = frozenset()
        # `remaining` never grows: every character shortens the line's room (or ends the line) by one, so the
        # default max_growth holds, and a mask depends on the token budget only when it is nearly spent.

    def start(self, prompt: str) -> LineState:
        """Line 0 at once after an empty prompt or one that ends its line; else the prompt's line is finished first."""
        return LineState(-1 if prompt and not prompt.endswith(NEWLINE) else 0)

    def remaining(self, s: LineState) -> int:
        lines_after = self.count - s.line - 1
        if s.line >= self.count:
            return 1
        return (self.line_max - len(s.text)) + 1 + lines_after * (self.line_max + 1) + 1

    def can_end(self, s: LineState) -> bool:
        return s.line >= self.count

    def boundary(self, s: LineState) -> bool:
        return s.line >= 0 and s.text == ""

    def bind(self, chars: Sequence[str], longest: int = 1, any_char: bool = False) -> None:
        self.longest = longest
        # Beyond ASCII only characters with a piece of their own: every character then costs at most one token.
        self.own = frozenset(c for c in chars if ord(c) > 0x7E)

    def key(self, s: LineState) -> Any:
        """Far from the line's end (room for any piece and then a space and the shortest end word still
        allowed) only the line, the rhymes so far and whether it may end now matter: every piece `feed` takes
        there is accepted whatever the line holds, but a line break, which ends the line on its last word."""
        if s.line < 0 or s.line >= self.count:
            return s
        room = self.line_max - len(s.text)
        words = self._candidates(s, s.line)
        shortest = words.shortest(s.used) if words is not None else 0
        unit = self.units[s.line] if s.line < len(self.units) else ""
        if shortest is None or room < shortest + 1 + self.longest + len(unit) or len(s.text) <= len(unit):
            return s
        return ("far", s.line, s.anchors, s.used, self._end_line(s) is not None)

    def _candidates(self, s: LineState, line: int) -> _Words | None:
        """The words line `line` may end on (None: any)."""
        if not self.scheme or self.rhymes is None:
            return None
        letter = self.scheme[line]
        anchor = next((part for name, part in s.anchors if name == letter), None)
        if anchor is not None:
            return self.rhymes.words(anchor)
        later = self.scheme[line + 1 :].count(letter)
        if not later:
            return None
        return self.rhymes.anchors(later + 1, frozenset(part for _, part in s.anchors))

    def feed(self, s: LineState, char: str) -> LineState | None:
        if s.line >= self.count:
            return None
        if s.line < 0:
            if char == NEWLINE:
                return LineState(0, "", s.anchors, s.used)
            return s._replace(text=s.text + char) if char.isprintable() and len(s.text) < self.line_max else None
        if char == NEWLINE:
            return self._end_line(s)
        if not char.isprintable() or len(s.text) >= self.line_max or not (char < "\x7f" or char in self.own):
            return None
        text = s.text + char
        unit = self.units[s.line] if s.line < len(self.units) else ""
        position = len(text) - 1
        if unit:
            if (
                position < len(unit)
                and char != unit[position]
                and (len(unit) == 1 or char.lower() != unit[position].lower())
            ):
                return None
            if len(unit) > 1 and position == len(unit) and _word_char(char):
                return None
        elif position == 0 and char.isspace():
            return None
        state = s._replace(text=text)
        return state if self._live(state) else None

    def _live(self, s: LineState) -> bool:
        """Can this line still end within line_max, on an allowed end word?"""
        text, room = s.text, self.line_max - len(s.text)
        unit = self.units[s.line] if s.line < len(self.units) else ""
        locked = len(unit) > 1 and len(text) <= len(unit)  # inside an acrostic word: it cannot grow
        if locked:
            room -= len(unit) - len(text)
            text = text + unit[len(text) :]
        if room < 0 or (room < 1 and not any(c.isalpha() for c in text)):
            return False
        words = self._candidates(s, s.line)
        if words is None:
            return True
        shortest = words.shortest(s.used)
        if shortest is None:
            return False
        if room >= shortest + 1:  # a space and a fresh word always fit
            return True
        if not text or text[-1].isspace():
            return shortest <= room
        if not _word_char(text[-1]):
            word = last_word(text)
            return word in words.members and word not in s.used
        chunk = text.split()[-1]
        start = 0
        while start < len(chunk) and not chunk[start].isalpha():
            start += 1
        fragment = chunk[start:]
        if not all(_word_char(c) for c in fragment):
            return False
        if locked:
            return fragment.lower() in words.members and fragment.lower() not in s.used
        return words.completes(fragment.lower(), room, s.used)

    def char_ranges(self, s: LineState) -> Sequence[tuple[int, int]] | None:
        return ((0x20, 0x7E),)  # never spelled in bytes beyond ASCII

    def _end_line(self, s: LineState) -> LineState | None:
        text = s.text
        unit = self.units[s.line] if s.line < len(self.units) else ""
        if not any(c.isalpha() for c in text) or len(text) < len(unit):
            return None
        anchors, used = s.anchors, s.used
        if self.scheme and self.rhymes is not None:
            letter = self.scheme[s.line]
            later = self.scheme[s.line + 1 :].count(letter)
            anchor = dict(anchors).get(letter)
            if anchor is not None or later:
                word = last_word(text)
                part = self.rhymes.part.get(word)
                if part is None or word in used:
                    return None
                if anchor is None:
                    if word not in self.rhymes.anchors(later + 1, frozenset(p for _, p in anchors)).members:
                        return None
                    anchors = (*anchors, (letter, part))
                elif part != anchor:
                    return None
                used = used | {word}
        return LineState(s.line + 1, "", anchors, used)


# -- building a constraint from the options ------------------------------------------------------------------

#: A vocabulary with at least this many Han pieces is a Chinese model.
HAN_PIECES = 500
#: The longest English line (fewer when --max-tokens leaves less room).
LINE_MAX = 72
LINE_MIN = 16


def is_chinese(tokenizer: Tokenizer) -> bool:
    count = 0
    for token in range(tokenizer.vocab_size):
        data = tokenizer.token_bytes(token)
        if len(data) == 3:
            with contextlib.suppress(UnicodeDecodeError):
                count += is_han(data.decode("utf-8"))
    return count >= HAN_PIECES


def build_constraint(options: SamplingOptions, tokenizer: Tokenizer) -> TokenConstraint | None:
    """The constraint the (validated) options ask for, or None; an impossible request raises LstmgenError first."""
    if not options.poem():
        return None
    if is_chinese(tokenizer):
        return _chinese(options, tokenizer)
    return _english(options, tokenizer)


def _chinese(options: SamplingOptions, tokenizer: Tokenizer) -> TokenConstraint:
    if options.rhyme_scheme:
        raise LstmgenError(
            f"{SCHEME_REF} is for English models; a Chinese poem rhymes on its even verses: use {RHYME_REF}"
        )
    acrostic = "".join((options.acrostic or "").split())
    if options.form:
        name, verses, length = form_shape(options.form)
        if len(acrostic) > verses:
            raise LstmgenError(f"{ACROSTIC_REF} has {len(acrostic)} characters but a {name} has {verses} verses")
    elif acrostic:
        name, verses, length = f"poem of {len(acrostic)} verses", len(acrostic), 0
    else:
        raise LstmgenError(f"{RHYME_REF} needs {FORM_REF} or {ACROSTIC_REF} to say how many verses the poem has")
    if options.rhyme and verses < 4:
        raise LstmgenError(f"{RHYME_REF} needs at least four verses (two even ones to rhyme), not {verses}")
    if options.rhyme or options.tones:
        _pypinyin(TONES_REF if options.tones else RHYME_REF)
    machine = ChinesePoem(verses, length, acrostic, options.rhyme, options.tones)
    constraint = TokenConstraint(machine, tokenizer)
    for char in acrostic:
        if not is_han(char):
            raise LstmgenError(f"{ACROSTIC_REF} must be Chinese characters; {char!r} is not one")
        if char not in constraint.own_chars:
            raise LstmgenError(f"{ACROSTIC_REF}: {char} is not in the model's vocabulary (it has no piece of its own)")
    for mark in (COMMA, STOP, NEWLINE):
        if mark not in constraint.own_chars:
            raise LstmgenError(f"this model's vocabulary has no piece for {mark!r}, which a Chinese poem needs")
    if options.rhyme or options.tones:
        if options.tones:
            for tone in (LEVEL, OBLIQUE):
                if not np.any(machine.han & (machine.tone == tone)):
                    raise LstmgenError(
                        f"{TONES_REF}: the model's vocabulary has no {'level' if tone == LEVEL else 'oblique'} character"
                    )
        if options.rhyme and not machine.group_ok.any():
            raise LstmgenError(
                f"{RHYME_REF}: no rhyme group has {machine.rhyme_count} characters in this model's vocabulary"
            )
    return constraint


def _english(options: SamplingOptions, tokenizer: Tokenizer) -> TokenConstraint:
    if options.form:
        raise LstmgenError(
            f"{FORM_REF} names Chinese forms, and this model writes an alphabetic script; use {ACROSTIC_REF} or {SCHEME_REF}"
        )
    if options.tones:
        raise LstmgenError(f"{TONES_REF} is for Chinese models (level and oblique tones)")
    units = acrostic_units(options.acrostic or "")
    for unit in units:
        if not all(_word_char(c) or c == "-" for c in unit) or not unit[0].isalpha():
            raise LstmgenError(f"{ACROSTIC_REF} for an English model takes letters or words; {unit!r} is neither")
    scheme = options.rhyme_scheme or ""
    if options.rhyme and not scheme:
        count = len(units) or 4
        scheme = "".join(chr(ord("A") + i // 2) for i in range(count))  # couplets: AABBCC...
        if len(set(scheme)) == len(scheme):
            raise LstmgenError(f"{RHYME_REF} needs at least two lines to rhyme")
    count = len(units) or len(scheme)
    if units and scheme and len(units) != len(scheme):
        raise LstmgenError(
            f"{ACROSTIC_REF} gives {len(units)} lines but {SCHEME_REF} {scheme} has {len(scheme)}; make them agree"
        )
    line_max = min(LINE_MAX, (options.max_tokens - 1) // (count + 1) - 1)
    longest = max((len(u) for u in units), default=1)
    if line_max < max(LINE_MIN, longest + 8):
        raise LstmgenError(
            f"{MAX_TOKENS_REF} {options.max_tokens} leaves too little room for {count} lines; give at least "
            f"{(max(LINE_MIN, longest + 8) + 1) * (count + 1) + 1}"
        )
    rhymes = end_words(tokenizer) if scheme else None
    if rhymes is not None:
        needs = sorted((scheme.count(letter) for letter in set(scheme) if scheme.count(letter) > 1), reverse=True)
        sizes = sorted((len(words) for words in rhymes.classes.values()), reverse=True)
        if len(sizes) < len(needs) or any(size < need for size, need in zip(sizes, needs)):
            raise LstmgenError(
                f"{SCHEME_REF} {scheme}: this model knows too few rhyming words for it; try a shorter scheme"
            )
    return TokenConstraint(EnglishLines(count, units, scheme, line_max, rhymes), tokenizer)
