"""The COCO caption-evaluation tokenizer, reproduced in pure Python.

pycocoevalcap's ``PTBTokenizer`` pipes every caption through Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` (a JFlex lexer, Java) and then drops the tokens in
``PUNCTUATIONS``. :func:`ptb_tokenize` gives the same string without Java: it re-implements the
lexer rules that occur in caption text -- words, contractions (``it's`` -> ``it 's``,
``don't`` -> ``do n't``, ``cannot`` -> ``can not``, ``gonna`` -> ``gon na``), possessives,
hyphenated words, numbers, fractions, dates, abbreviations and acronyms (``st.``, ``u.s.``,
``a.m.``; single letters keep their period), quotes, brackets (``(`` -> ``-lrb-``: lower-cased
*after* escaping, so pycocoevalcap's upper-case ``-LRB-`` filter never removes it), ellipses,
dashes, currency, smileys, SGML-like tags (``<unk>``), URLs and the symbols the 2014 lexer knows;
characters it does not know (e.g. emoji) are deleted, as the Java tokenizer does.

The rules and priorities follow the lexer specification, pinned against the 3.4.1 jar on caption
fixtures and character-level fuzzing (``tests/test_metrics_ngram.py``). A few rules look past
the end of a line into the next caption (``"B."`` before ``"The ..."``, ``"ca."`` before a
number); :func:`tokenize_captions` feeds captions in pycocoevalcap's file order so they see the
same text, while a lone :func:`ptb_tokenize` call assumes an empty next line.

One deliberate difference: pycocoevalcap only replaces ``\\n`` in a caption, so a caption holding
``\\r``, ``\\v``, ``\\f``, U+2028 or U+2029 becomes two Java output lines and every later caption of
the batch is scored against the wrong image. :func:`sanitize_caption` maps those to spaces; both
our tiers apply it (the official tier before calling pycocoevalcap).

Lexer semantics (JFlex): at each position every rule is tried, the longest match wins (trailing
context ``r1/r2`` counts towards the length, only ``r1`` is the token), ties go to the earlier rule.

Speed (BENCHMARKS.md, "Evaluation end to end on real captions"): a caption of plain words and
punctuation that is dropped anyway (90 % of Flickr8k's) skips the lexer (`_plain`), and
`tokenize_captions` lexes a repeated caption once unless its next line could change it
(`reads_next_line`), so tokenizing references repeated per system or per judged caption costs
one pass over the distinct ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import TypeVar

K = TypeVar("K")

# pycocoevalcap/tokenizer/ptbtokenizer.py
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
     "...", ";"]
)  # fmt: skip

# Characters the Java lexer treats as line breaks (\n is already replaced by pycocoevalcap).
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\u2028\u2029]")
# An ASCII word followed by a blank is always one WORD token, unless it is split ("can not").
_NOT_SPLIT = "(?!(?i:cannot|gonna|gotta|lemme|gimme|wanna)[ \t\n,;:!?.])"
_FAST_RUN = re.compile(f"(?:[ \t]+|{_NOT_SPLIT}[A-Za-z]+(?=[ \t\n]))+")
_FAST_PUNCT = re.compile(f"{_NOT_SPLIT}([A-Za-z]+)([,;:!?.])(?=[ \t\n])")
# ... and a plain word + clitic before a blank: "it 's", "do n't" (ties go to these rules).
_FAST_CLITIC = re.compile(
    "([A-Za-z]*[A-MO-Za-mo-z])([nN]'[tT])(?=[ \t\n])"
    "|([A-Za-z]+)('(?:[msdMSD]|[rR][eE]|[vV][eE]|[lL][lL]))(?=[ \t\n])"
)


def sanitize_caption(caption: str) -> str:
    """Replace line-breaking characters by spaces so one caption stays one tokenizer line."""
    return _LINE_BREAKS.sub(" ", caption)


def ptb_tokens(caption: str, following: str | None = "") -> list[str]:
    """Lower-cased PTB tokens of one caption, punctuation included (the Java tokenizer's output).

    `following` is the caption on the next line of the tokenizer's input: a few lexer rules look
    past the end of the line (a single letter plus period before ``"A "``, ``"ca."`` before a
    number). ``None`` means the caption is the last line (end of file).
    """
    caption = sanitize_caption(caption)
    text = caption if following is None else f"{caption}\n{sanitize_caption(following)[:64]}"
    lexer = _lexer()
    tokens: list[str] = []
    pos, end = 0, len(caption)
    while pos < end:
        # Fast paths, equivalent to the rules: blanks and plain ASCII words before a blank ...
        run = _FAST_RUN.match(text, pos)
        if run is not None:
            tokens.extend(run.group().lower().split())
            pos = run.end()
            continue
        # ... and a plain word + one punctuation mark before a blank (unless an abbreviation).
        m = _FAST_PUNCT.match(text, pos)
        if m is not None and not (m.group(2) == "." and lexer.abbreviation.fullmatch(m.group())):
            tokens += [m.group(1).lower(), m.group(2)]
            pos = m.end()
            continue
        m = _FAST_CLITIC.match(text, pos)
        if m is not None:
            tokens += [g.lower() for g in m.groups() if g is not None]
            pos = m.end()
            continue
        best, best_len = None, 0
        for rule in lexer.candidates(text[pos]):
            m = rule.match(text, pos)
            if m is not None and m.end() - pos > best_len:
                best, best_len = (rule, m), m.end() - pos
        rule, m = best  # the last rule matches any character
        token, consumed = rule.action(m.group("t"))
        if token is not None:
            tokens.append(token.lower())
        pos += consumed
    return tokens


# A whole caption of plain ASCII words, single spaces and dropped punctuation ("A man, riding
# a horse ."): the fast paths of `ptb_tokens` lex every piece of it, so it is its words, lower
# case. The newline after it lets the last word see what `_FAST_RUN` / `_FAST_PUNCT` see.
_WORD = f"{_NOT_SPLIT}[A-Za-z]+"
_PLAIN = re.compile(f"(?:{_WORD}[,;:!?]? )*({_WORD})( ?[.!?])?\n")
_LETTERS = re.compile("[A-Za-z]+")


def _plain(caption: str) -> str | None:
    """`ptb_tokenize` of a plain caption (see `_PLAIN`) followed by a line; None otherwise."""
    m = _PLAIN.fullmatch(caption + "\n")
    if m is None or (m.group(2) == "." and _lexer().abbreviation.fullmatch(m.group(1) + ".")):
        return None  # "st." and "B." are abbreviations: the lexer's rules decide
    return " ".join(_LETTERS.findall(caption)).lower()


def ptb_tokenize(caption: str, following: str | None = "") -> str:
    """One caption exactly as pycocoevalcap's PTBTokenizer returns it (space-joined tokens)."""
    plain = _plain(caption) if following is not None else None
    if plain is not None:
        return plain
    line = " ".join(ptb_tokens(caption, following)).rstrip()
    return " ".join(w for w in line.split(" ") if w not in PUNCTUATIONS)


def reads_next_line(caption: str) -> bool:
    """Whether the next line of the tokenizer's input can change how `caption` is lexed.

    Only four rules look further than one character past a caption's end (the newline):
    ``ACRONYM_END`` (``"U.S."`` + blanks + a sentence start), ``ABBREV3`` (``"ca."`` + a digit),
    ``ABBREV1_END`` and ``ABBREV1_CTX`` (``"Jan."`` + the next two characters). Each matches a
    token of letters ending in a period, followed by nothing but blanks up to the end of the
    line. So unless the caption, trailing white space stripped, ends with a period right after
    a non-blank character, it is lexed the same whatever line comes next (every other rule's
    trailing context is one character: the newline itself). "a dog ." is such a caption.
    """
    stripped = caption.rstrip()
    return len(stripped) >= 2 and stripped[-1] == "." and not stripped[-2].isspace()


def tokenize_captions(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """``{id: [caption, ...]}`` -> ``{id: [tokenized, ...]}``, like ``PTBTokenizer.tokenize``.

    The captions are lexed in pycocoevalcap's order (one file, one line each, in dict order), so
    the rare rules that look into the next line see the same text as the Java tokenizer does.
    A caption that occurs again is lexed once (references repeat: an image's references for
    each of its judged captions, or for each system), unless `reads_next_line` says its next
    line matters; the last line (no next line) is always lexed on its own.
    """
    flat = [(key, c.replace("\n", " ")) for key, caps in captions.items() for c in caps]
    out: dict[K, list[str]] = {key: [] for key in captions}
    seen: dict[str, str] = {}  # caption -> its tokens, for captions the next line cannot change
    for i, (key, c) in enumerate(flat):
        following = flat[i + 1][1] if i + 1 < len(flat) else None
        if following is None or reads_next_line(c):
            out[key].append(ptb_tokenize(c, following))
            continue
        tokens = seen.get(c)
        if tokens is None:
            tokens = seen[c] = ptb_tokenize(c, following)
        out[key].append(tokens)
    return out


# --------------------------------------------------------------------------------------------
# The lexer rules. Each rule has one or more patterns (several when an alternation must be
# matched longest-first, which Python's leftmost-first `re` would not do) with a named group
# "t" for the token; the rest of a match is trailing context. An action maps the token text to
# (output token or None, characters consumed) -- consuming fewer emulates JFlex's yypushback.
# --------------------------------------------------------------------------------------------


class _Rule:
    __slots__ = ("name", "patterns", "action", "exhaustive", "first")

    def __init__(
        self,
        name: str,
        first: str,
        patterns: Iterable[str],
        action: Callable[[str], tuple[str | None, int]],
        exhaustive: bool = False,
    ) -> None:
        self.name = name
        self.first = re.compile(first)  # the characters a match can start with (a superset)
        self.patterns = tuple(re.compile(p) for p in patterns)
        self.action = action
        # Leftmost-first `re` may stop short of the longest match (URL host/path split):
        # then every longer end up to the next white space is tried.
        self.exhaustive = exhaustive

    def match(self, text: str, pos: int) -> re.Match[str] | None:
        best = None
        for pattern in self.patterns:
            m = pattern.match(text, pos)
            if m is None:
                continue
            if self.exhaustive:
                stop = _NON_SPACE_RUN.match(text, pos).end()
                for end in range(stop, m.end(), -1):
                    longer = pattern.fullmatch(text, pos, end)
                    if longer is not None:
                        m = longer
                        break
            if best is None or m.end() > best.end():
                best = m
        return best


_NON_SPACE_RUN = re.compile("[^ \t\n\r\f]*")


class _Lexer:
    """The ordered rules, and for each character the rules that can start with it."""

    def __init__(self, rules: tuple[_Rule, ...], abbreviation: str) -> None:
        self.rules = rules
        # "word." that some abbreviation rule could keep whole (a superset: case ignored)
        self.abbreviation = re.compile(abbreviation, re.IGNORECASE)
        self._by_char: dict[str, tuple[_Rule, ...]] = {}

    def candidates(self, ch: str) -> tuple[_Rule, ...]:
        found = self._by_char.get(ch)
        if found is None:
            found = self._by_char[ch] = tuple(r for r in self.rules if r.first.match(ch))
        return found


def _keep(tok: str) -> tuple[str | None, int]:
    return tok, len(tok)


def _skip(tok: str) -> tuple[str | None, int]:
    return None, len(tok)


def _replace(mapping: Callable[[str], str]) -> Callable[[str], tuple[str | None, int]]:
    return lambda tok: (mapping(tok), len(tok))


def _const(value: str) -> Callable[[str], tuple[str | None, int]]:
    return lambda tok: (value, len(tok))


def _pushback(n: int) -> Callable[[str], tuple[str | None, int]]:
    return lambda tok: (tok[:-n], len(tok) - n)


def _dup_period(tok: str) -> tuple[str | None, int]:
    """Keep the abbreviation with its period and lex the period again (sentence end)."""
    return tok, len(tok) - 1


def _acronym_sentence_end(tok: str) -> tuple[str | None, int]:
    """processAcronym: "I." before a sentence start is "I" + "."; longer ones are duplicated."""
    if len(tok) == 2:
        return tok[:1], 1
    return tok, len(tok) - 1


_QUOTE_MAPS = [
    (re.compile("[\u0091\u2018\u201b\u2039]"), "`"),
    (re.compile("[\u0092\u2019\u203a]"), "'"),
    (re.compile("[\u0093\u201c\u00ab]"), "``"),
    (re.compile("[\u0094\u201d\u00bb]"), "''"),
]
_SINGLE_QUOTE = re.compile("&apos;|'")  # Java's replaceAll: case-sensitive
_DOUBLE_QUOTE = re.compile('"|&quot;')


def _latex_quotes(probably_left: bool) -> Callable[[str], tuple[str | None, int]]:
    def action(tok: str) -> tuple[str | None, int]:
        out = _SINGLE_QUOTE.sub("`" if probably_left else "'", tok)
        out = _DOUBLE_QUOTE.sub("``" if probably_left else "''", out)
        for pattern, repl in _QUOTE_MAPS:
            out = pattern.sub(repl, out)
        return out, len(tok)

    return action


def _fractions(tok: str) -> str:
    return tok.translate({0xBC: "1/4", 0xBD: "1/2", 0xBE: "3/4", 0x2153: "1/3", 0x2154: "2/3"})


def _currency(tok: str) -> str:
    return tok.translate({0xA2: "cents", 0xA3: "#", 0x80: "$", 0xA4: "$", 0x20A0: "$", 0x20AC: "$"})


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


def _amp(tok: str) -> str:
    return re.sub("(?i:&amp;)", "&", tok)


def _char_class(predicate: Callable[[str], bool], extra: str = "") -> str:
    """A regex character class of the BMP characters satisfying `predicate` (Java's JFlex lexer
    reads UTF-16 units, so astral characters never match a class and end up deleted)."""
    ranges, start = [], None
    for cp in range(0x10000):
        ok = not 0xD800 <= cp <= 0xDFFF and predicate(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            ranges.append((start, cp - 1))
            start = None
    if start is not None:
        ranges.append((start, 0xFFFF))
    body = "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )
    return f"[{body}{extra}]"


def _ci(words: str) -> str:
    """JFlex %caseless: literals match in any case, character classes do not."""
    return f"(?i:{words})"


@cache
def _lexer() -> _Lexer:
    # Letters beyond Java's isLetter that PTBLexer's WORD accepts (combining marks etc.).
    word_extra = (
        "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d"
        "\u0384\u0385\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525"
        "\u055a-\u055f\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f"
        "\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f\u0750-\u077f"
        "\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955"
        "\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3"
        "\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2"
        "\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48"
        "\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
    )
    alpha = _char_class(str.isalpha)  # Java Character.isLetter: categories L*
    D = _char_class(str.isdecimal)  # Java Character.isDigit: category Nd
    splet = "&[aeiouAEIOU]" + _ci("acute|grave|uml") + ";"
    WL = f"(?:{alpha[:-1]}{word_extra}]|{splet})"  # WORD letter
    WORD = f"{WL}(?:{WL}|{D})*(?:[.!?]{WL}(?:{WL}|{D})*)*"
    SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
    NEWLINE = "(?:\r\n?|\n|\u2028|\u2029|\x0b|\x0c|\x85)"
    SPACENL = f"(?:{SPACE}|{NEWLINE})"
    SGML = (
        "<(?:[!?][A-Za-z-][^>\r\n]*|/?[A-Za-z][A-Za-z0-9:.-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.-]*"
        "|[A-Za-z][A-Za-z0-9_:.-]*[ ]*=[ ]*['\"][^\r\n'\"]*['\"]|['\"][^\r\n'\"]*['\"]"
        "|[ ]*/))*[ ]*)>"
    )
    APOS = "(?:['\u0092\u2019]|" + _ci("&apos;") + ")"
    APOSETC = f"(?:{APOS}|[`\u0091\u2018\u201b])"
    REDAUX = f"{APOS}(?:[msdMSD]|{_ci('re|ve|ll')})"
    SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
    SREDAUX = f"{_ci('n')}{APOSETC}{_ci('t')}"
    NUM = f"(?:{D}*(?:[.:,\u00ad\u066b\u066c]{D}+)+|{D}+)"
    HYPHEN = "[-_\u058a\u2010\u2011]"
    LD = f"(?:{alpha}|{D})"
    THING_PART = f"(?:[dDoOlL]{APOSETC}{LD})?{LD}+"
    THING = f"{THING_PART}(?:{HYPHEN}{THING_PART})*"
    THINGA = "[A-Z]+(?:(?:[+&]|" + _ci("&amp;") + ")[A-Z]+)+"
    ACRO_MULTI = "[A-Za-z](?:\\.[A-Za-z])+"
    ACRO = (
        "(?:[A-Za-z](?:\\.[A-Za-z])*|" + _ci("(?:canada|sino|korean|eu|japan|non)-u\\.s")
        + "|" + _ci("u\\.s\\.-(?:u\\.k|u\\.s\\.s\\.r)") + ")"
    )  # fmt: skip
    HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{ACRO_MULTI}\\.|[A-Za-z0-9\u00ad]+))+"
    INSENTP = "[,;:\u3001]"
    FILENAME_EXT = _ci(
        "bat|bmp|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?|jar|java|jpe?g|mov|mp3|pdf|php|pl"
        "|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip"
    )
    abbrev1 = (
        _ci(
            "jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu(?:rs)?|fri"
            "|ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev"
            "|okla|penn|tenn|va|vt|wisc?|wyo|inc|cos?|corp|ltd|plc|rt|bancorp|bhd|assn|univ|intl"
            "|sys|tel|est|ext|sq|jr|sr|bros|ed\\.d|ph\\.d|blvd|rd|esq|etc|al|seq|bldg"
        )
        + "|[A]"
        + _ci("z|rk")
        + "|[D]"
        + _ci("el")
        + "|[I]"
        + _ci("ll")
        + "|[L]"
        + _ci("a")
        + ("|[M]" + _ci("ass|iss") + "|[O]" + _ci("re") + "|[P]" + _ci("a") + "|[T]" + _ci("ex"))
        + "|[W]"
        + _ci("ash")
        + "|"
        + _ci("p")
        + "p?"
        + _ci("t")
        + "[ye]"
        + _ci("s")
        + "?"
    )
    ABBREV1 = f"(?:{abbrev1})\\."
    abtitle = (
        _ci(
            "mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl"
            "|pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst"
            "|assoc|ens|insp|mlle|mme|msgr|sfc|sr|vs|alex|wm|jos|cie|a\\.k\\.a|cf|treas|ph|invt"
            "|elec|natl|dept|blvd|rd"
        )
        + "|[M]"
        + _ci("iss")
        + "|[v]|"
        + _ci("m")
        + "[ft]"
        + _ci("g")
    )
    ABBREV4 = f"(?:{abtitle}|{ACRO})"
    ABBREV3 = _ci("(?:ca|figs?|prop|nos?|art|bldg|pp|op)\\.")
    FOLLOW = (
        "(?:[A](?:" + _ci("bout|ccording|dditionally|fter|n|s|t") + ")?|[B]" + _ci("ut")
        + "|[E]" + _ci("arlier") + "|[H]" + _ci("e|er|ere|owever") + "|[I]" + _ci("f|n|t")
        + "|[L]" + _ci("ast") + "|[M]" + _ci("any|ore|r\\.|s\\.") + "|[N]" + _ci("ow")
        + "|[O]" + _ci("nce|ne|ther|ur") + "|[S]" + _ci("he|ince|o|ome|uch")
        + "|[T]" + _ci("hat|he|heir|hen|here|hese|hey|his") + "|[W]" + _ci("e|hen|hile|hat")
        + "|[Y]" + _ci("et|ou") + ")"
    )  # fmt: skip
    QUOTE_CHARS = (
        "[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039"
        "\u203a\u00ab\u00bb]"
    )
    misc = (
        "[+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7"
        "\u0387\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b"
        "\u061e\u066a\u066d\u0703-\u070d\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017"
        "\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e"
        "\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20"
        "\uff3b-\uff40\uff5b-\uff65]"
    )
    asian_smiley = [
        "[\\^x=~<>]\\.\\[\\^x=~<>]",
        "[\\-\\^x=~<>']_[\\-\\^x=~<>']",
        "\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)",
        "\\([\\^x=~<>']-[\\^x=~<>'`]\\)",
    ]
    phone = [
        "\\([0-9]{2,3}\\)[ \u00a0]?[0-9]{3,4}[- \u00a0]?[0-9]{3,5}",
        "(?:\\+\\+?)?(?:[0-9]{2,4}[- \u00a0])?[0-9]{2,4}[- \u00a0][0-9]{3,4}[- \u00a0]?[0-9]{3,5}",
        "(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}",
    ]
    apoword = [
        f"{APOS}{_ci('n')}{APOS}?",
        f"[lLdDjJ]{APOS}",
        f"{_ci('dunkin|somethin|ol')}{APOS}",
        f"{APOS}{_ci('em')}",
        f"{_ci('diff')}{APOSETC}{_ci('rent')}",
        f"[A-HJ-XZn]{APOSETC}{alpha}{{2}}{alpha}*",
        f"{APOS}[2-9]0{_ci('s')}",
        f"{APOS}{_ci('till?')}",
        f"{alpha}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{alpha}*",
        f"{APOS}{_ci('cause')}",
        _ci("cont'd\\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"),
        _ci("o") + f"{APOSETC}{_ci('o')}",
    ]  # fmt: skip
    email = (
        "(?:<|" + _ci("&lt;") + ')?[a-zA-Z0-9][^ \t\n\f\r"<>|(){}\u00a0]*@'
        '(?:[^ \t\n\f\r"<>|(){}.\u00a0]+\\.)*[^ \t\n\f\r"<>|(){}.\u00a0]+'
        "(?:>|" + _ci("&gt;") + ")?"
    )
    likely_url = (
        "(?:(?:" + _ci("www") + "\\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4})"
        "|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\\.)+" + _ci("com|net|org|edu") + "))"
        "(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
    )  # fmt: skip

    def T(p: str, ctx: str = "") -> str:
        return f"(?P<t>{p}){ctx}"

    q_left, q_right = _latex_quotes(True), _latex_quotes(False)
    spec: list[tuple] = [
        ("PROG_LANGS", [T(_ci("c\\+\\+|[cf]#"))], _keep),
        ("ASSIM3", [T(_ci("cannot|'twas"))], _pushback(3)),
        ("ASSIM2", [T(_ci("'tis|gonna|gotta|lemme|gimme|wanna"))], _pushback(2)),
        ("SGML", [T(SGML)], _replace(lambda t: t.replace(" ", "\u00a0"))),
        (
            "SPMDASH",
            [T(_ci("&(?:md|mdash|ndash);") + "|[\u0096\u0097\u2013\u2014\u2015]")],
            _const("--"),
        ),  # fmt: skip
        ("SPAMP", [T(_ci("&amp;"))], _const("&")),
        ("SPPUNC", [T(_ci("&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"))], _keep),
        ("WORD_REDAUX", [T(WORD, REDAUX)], _replace(lambda t: t.replace("\u00ad", ""))),
        ("SWORD_SREDAUX", [T(SWORD, SREDAUX)], _replace(lambda t: t.replace("\u00ad", ""))),
        ("WORD", [T(WORD)], _replace(lambda t: t.replace("\u00ad", "") or "-")),
        ("APOWORD", [T(p) for p in apoword], _keep),
        ("APOWORD2", [T(_ci("y") + APOS, f"(?={alpha})")], _keep),
        (
            "FULLURL",
            [T(_ci("https?") + '://[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},-]')],
            _keep,
            True,
        ),  # fmt: skip
        ("LIKELYURL", [T(likely_url)], _keep, True),
        ("EMAIL", [T(email)], _keep, True),
        ("TWITTER", [T("@[a-zA-Z_][a-zA-Z_0-9]*"), T(f"#{WL}+")], _keep),
        ("REDAUX_CTX", [T(REDAUX, "[^A-Za-z]")], q_right),
        ("SREDAUX", [T(SREDAUX)], q_right),
        ("DATE", [T(f"{D}{{1,2}}[-/]{D}{{1,2}}[-/]{D}{{2,4}}")], _keep),
        ("NUMBER", [T(f"[-+]?{NUM}")], _replace(lambda t: t.replace("\u00ad", "") or "-")),
        (
            "SUBSUPNUM",
            [
                T(
                    "[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+"
                    "|[\u2080-\u2089]+)"
                )
            ],
            _keep,
        ),  # fmt: skip
        (
            "FRAC",
            [T(f"(?:{D}{{1,4}}[- \u00a0])?{D}{{1,4}}(?:\\\\?/|\u2044){D}{{1,4}}")],
            _replace(lambda t: t.replace(" ", "\u00a0")),
        ),  # fmt: skip
        ("FRAC2", [T("[\u00bc\u00bd\u00be\u2153-\u215e]")], _replace(_fractions)),
        (
            "TBSPEC",
            [
                T(
                    _ci(
                        "-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\\.d\\.s|pro-|anti-|s(?:&|&amp;)p-500"
                        "|s(?:&|&amp;)ls"
                    )
                    + "|"
                    + _ci("cap")
                    + APOS
                    + _ci("n")
                    + "|"
                    + _ci("c")
                    + APOS
                    + _ci("est")
                )
            ],
            _replace(_amp),
        ),  # fmt: skip
        (
            "THING3",
            [T("[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}")],
            _keep,
        ),  # fmt: skip
        ("DOLSIGN", [T("[A-Z]*\\$|#")], _keep),
        (
            "DOLSIGN2",
            [
                T(
                    "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1"
                    "\uffe5\uffe6]"
                )
            ],
            _replace(_currency),
        ),  # fmt: skip
        (
            "ACRONYM_END",
            [T(f"{ACRO}\\.", f"{SPACENL}+(?:{FOLLOW}|{SGML}){SPACENL}")],
            _acronym_sentence_end,
        ),
        ("ABBREV3", [T(ABBREV3, f"{SPACENL}?{D}")], _keep),
        ("ABBREV1_END", [T(ABBREV1, f"{SPACENL}(?:{SPACENL}|[A-Z]|{SGML})")], _dup_period),
        ("ABBREV1_CTX", [T(ABBREV1, "(?s:..)")], _keep),
        ("ABBREV1", [T(ABBREV1)], _dup_period),
        ("ABBREV2", [T(f"{ABBREV4}\\.")], _keep),
        ("ABBREV4", [T(ABBREV4, SPACE)], _keep),
        ("ACRO", [T(ACRO, SPACENL)], _keep),
        ("TBSPEC2", [T(f"{APOS}[0-9][0-9]", SPACENL)], _keep),
        ("FILENAME", [T(f"{LD}+(?:\\.{LD}+)*\\.{FILENAME_EXT}", f"(?:{SPACENL}|[.?!,])")], _keep),
        ("WORD_PERIOD", [T(f"{WORD}\\.", INSENTP)], _replace(lambda t: t.replace("\u00ad", ""))),
        ("PHONE", [T(p) for p in phone], _replace(lambda t: _parens(t.replace(" ", "\u00a0")))),
        ("DBLQUOT_LEFT", [T('"|' + _ci("&quot;"), "[A-Za-z0-9$]")], q_left),
        ("DBLQUOT", [T('"|' + _ci("&quot;"))], q_right),
        ("DEL", [T("\x7f")], _skip),
        ("LESSTHAN", [T("<|" + _ci("&lt;"))], _const("<")),
        ("GREATERTHAN", [T(">|" + _ci("&gt;"))], _const(">")),
        (
            "SMILEY",
            [T("[<>]?[:;=][-o*']?[()DPdpO\\\\{@|\\[\\]]", "[^A-Za-z0-9]")],
            _replace(_parens),
        ),  # fmt: skip
        ("ASIANSMILEY", [T(p) for p in asian_smiley], _replace(_parens)),
        ("LCB", [T("\\{")], _const("-LCB-")),
        ("RCB", [T("\\}")], _const("-RCB-")),
        ("LSB", [T("\\[")], _const("-LSB-")),
        ("RSB", [T("\\]")], _const("-RSB-")),
        ("LRB", [T("\\(")], _const("-LRB-")),
        ("RRB", [T("\\)")], _const("-RRB-")),
        ("HYPHENS", [T("-+")], lambda t: ("--" if 3 <= len(t) <= 4 else t, len(t))),
        (
            "LDOTS",
            [T("\\.{3,5}"), T("(?:\\.[ \u00a0]){2,4}\\."), T("[\x85\u2026]")],
            _const("..."),
        ),  # fmt: skip
        ("FNMARKS", [T("@+|#+|_+")], _keep),
        ("ASTS", [T("\\*+|(?:\\\\\\*){1,3}")], _keep),
        ("INSENTP", [T(INSENTP)], _keep),
        ("QEX", [T("[?!]+")], _keep),
        ("PERIOD", [T("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]")], _keep),
        ("EQUALS", [T("=")], _keep),
        ("SLASH", [T("/")], _keep),
        (
            "HTHING_PERIOD",
            [T(f"{HTHING}\\.", INSENTP)],
            _replace(lambda t: t.replace("\u00ad", "")),
        ),
        ("HTHING", [T(HTHING)], _replace(lambda t: t.replace("\u00ad", ""))),
        ("THING_PERIOD", [T(f"{THING}\\.", INSENTP)], _keep),
        ("THING", [T(THING)], _keep),
        ("THINGA_PERIOD", [T(f"{THINGA}\\.", INSENTP)], _replace(_amp)),
        ("THINGA", [T(THINGA)], _replace(_amp)),
        ("QUOTE_LEFT", [T("'", "[A-Za-z][^ \t\n\r\u00a0]")], q_left),
        ("REDAUX", [T(REDAUX)], q_right),
        ("QUOTES", [T(APOS), T("''"), T(f"{QUOTE_CHARS}{{1,2}}")], q_right),
        ("FAKEDUCKFEET", [T("<<|>>")], _keep),
        ("MISCSYMBOL", [T(misc)], _keep),
        ("SPACES", [T(f"\x00|{SPACE}+|[\u200b\u200e\u200f\ufeff]")], _skip),
        ("NEWLINE", [T(NEWLINE)], _skip),
        ("NBSP", [T(_ci("&nbsp;"))], _skip),
        ("UNTOKENIZABLE", [T("(?s:.)")], _skip),  # deleted with a warning by the Java lexer
    ]
    alpha_first = f"{alpha[:-1]}{word_extra}&]"
    apos_first = "['\\u0092\\u2019&]"
    first = {
        "PROG_LANGS": "[cCfF]", "ASSIM3": "[cC']", "ASSIM2": "['gGlLwW]", "SGML": "<",
        "SPMDASH": "[&\\u0096\\u0097\\u2013\\u2014\\u2015]", "SPAMP": "&", "SPPUNC": "&",
        "WORD_REDAUX": alpha_first, "SWORD_SREDAUX": "[A-Za-z\\u00ad]", "WORD": alpha_first,
        "APOWORD": f"{alpha_first}|{apos_first}", "APOWORD2": "[yY]", "FULLURL": "[hH]",
        "LIKELYURL": "[wW]|[^ \\t\\n\\f\\r\"`'<>|.!?(){},-_$]", "EMAIL": "[<&a-zA-Z0-9]",
        "TWITTER": "[@#]", "REDAUX_CTX": apos_first, "SREDAUX": "[nN]", "DATE": D,
        "NUMBER": f"[-+.:,\\u00ad\\u066b\\u066c]|{D}", "FRAC": D, "SUBSUPNUM":
        "[\\u207a\\u207b\\u208a\\u208b\\u2070\\u00b9\\u00b2\\u00b3\\u2074-\\u2079\\u2080-\\u2089]",
        "FRAC2": "[\\u00bc\\u00bd\\u00be\\u2153-\\u215e]", "TBSPEC": "[-cCpPaAsS]",
        "THING3": "[A-Za-z0-9]", "DOLSIGN": "[A-Z$#]", "ACRONYM_END": "[A-Za-z]",
        "DOLSIGN2": "[\\u00a2-\\u00a5\\u0080\\u20a0-\\u20ac\\u060b\\u0e3f\\uffe0-\\uffe6]",
        "ABBREV3": "[A-Za-z]", "ABBREV1_END": "[A-Za-z]", "ABBREV1_CTX": "[A-Za-z]",
        "ABBREV1": "[A-Za-z]", "ABBREV2": "[A-Za-z]", "ABBREV4": "[A-Za-z]", "ACRO": "[A-Za-z]",
        "TBSPEC2": apos_first, "FILENAME": LD, "WORD_PERIOD": alpha_first, "PHONE": "[(+0-9]",
        "DBLQUOT_LEFT": '["&]', "DBLQUOT": '["&]', "DEL": "\\x7f", "LESSTHAN": "[<&]",
        "GREATERTHAN": "[>&]", "SMILEY": "[<>:;=]", "ASIANSMILEY": "[-\\^x=~<>'(]",
        "LCB": "\\{", "RCB": "\\}", "LSB": "\\[", "RSB": "\\]", "LRB": "\\(", "RRB": "\\)",
        "HYPHENS": "-", "LDOTS": "[.\\x85\\u2026]", "FNMARKS": "[@#_]", "ASTS": "[*\\\\]",
        "INSENTP": INSENTP, "QEX": "[?!]",
        "PERIOD": "[.\\u00a1\\u00bf\\u037e\\u0589\\u061f\\u06d4\\u0700-\\u0702\\u07fa\\u3002]",
        "EQUALS": "=", "SLASH": "/", "HTHING_PERIOD": "[A-Za-z0-9]", "HTHING": "[A-Za-z0-9]",
        "THING_PERIOD": LD, "THING": LD, "THINGA_PERIOD": "[A-Z]", "THINGA": "[A-Z]",
        "QUOTE_LEFT": "'", "REDAUX": apos_first, "QUOTES": f"{apos_first}|{QUOTE_CHARS}",
        "FAKEDUCKFEET": "[<>]", "MISCSYMBOL": misc,
        "SPACES": "[\\x00 \\t\\u00a0\\u2000-\\u200b\\u3000\\u200e\\u200f\\ufeff]",
        "NEWLINE": "[\\r\\n\\u2028\\u2029\\x0b\\x0c\\x85]", "NBSP": "&", "UNTOKENIZABLE": "(?s:.)",
    }  # fmt: skip
    rules = tuple(_Rule(entry[0], first[entry[0]], *entry[1:]) for entry in spec)
    return _Lexer(rules, f"{ABBREV1}|{ABBREV4}\\.|{ABBREV3}")
