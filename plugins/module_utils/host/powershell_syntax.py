# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A PowerShell tokenizer and a PowerShell 2.0 checker for the bridge scripts.

No PowerShell runs here, so the bridge scripts (``bridge_scripts.py``) are checked by reading them:
``tokenize(text)`` splits PowerShell into tokens (comments incl. ``<# #>``, single/double-quoted
strings and here-strings with their escapes, ``$(...)`` inside expandable strings as code, variables,
splats, type literals ``[x]``, ``-xxx`` operators/parameters, command names, ``.member`` and
``::member``, numbers, punctuation), and ``check_powershell2(text)`` walks the tokens and reports every
construct of PowerShell 3.0 or later from ``DENIED_*`` below, and brackets that do not balance outside
strings and comments. Text inside strings and comments is never taken for code.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

SINGLE_QUOTES = u"'\u2018\u2019\u201a\u201b"
DOUBLE_QUOTES = u'"\u201c\u201d\u201e'
DASHES = u"-\u2013\u2014\u2015"

KEYWORDS = set("""begin break catch class configuration continue data do dynamicparam else elseif end enum exit filter finally
for foreach function hidden if in inlinescript parallel param process return sequence static switch throw trap try until
using while workflow""".split())

# Commands that PowerShell 2.0 (Windows Server 2008 R2 as shipped) lacks, or modules it does not have there.
DENIED_COMMANDS = {
    "convertto-json": "ConvertTo-Json is PowerShell 3.0+", "convertfrom-json": "ConvertFrom-Json is PowerShell 3.0+",
    "invoke-restmethod": "PowerShell 3.0+", "invoke-webrequest": "PowerShell 3.0+", "get-filehash": "PowerShell 4.0+",
    "new-temporaryfile": "PowerShell 5.0+", "write-information": "PowerShell 5.0+", "format-hex": "PowerShell 5.0+",
    "expand-archive": "PowerShell 5.0+", "compress-archive": "PowerShell 5.0+", "new-guid": "PowerShell 5.0+",
    "convertfrom-string": "PowerShell 5.0+", "get-clipboard": "PowerShell 5.0+", "set-clipboard": "PowerShell 5.0+",
    "get-itempropertyvalue": "PowerShell 5.0+", "import-powershelldatafile": "PowerShell 5.0+",
    "get-timezone": "PowerShell 5.1+", "get-computerinfo": "PowerShell 5.1+", "register-argumentcompleter": "PowerShell 5.0+",
    "get-runspace": "PowerShell 5.1+", "wait-debugger": "PowerShell 5.0+", "get-scheduledtask": "ScheduledTasks module (2012+)",
    "resolve-dnsname": "DnsClient module (2012+)", "test-netconnection": "NetTCPIP module (2012 R2+)",
    "get-netadapter": "NetAdapter module (2012+)", "get-volume": "Storage module (2012+)", "get-disk": "Storage module (2012+)",
}
DENIED_COMMAND_PATTERNS = (
    (re.compile(r"^[a-z]+-cim[a-z]*$"), "CIM cmdlets are PowerShell 3.0+"),
    (re.compile(r"^[a-z]+-vm[a-z]*$"), "the Hyper-V PowerShell module does not exist on Windows Server 2008 R2"),
)
# Parameters added after 2.0, per command (aliases included).
_GCI = ("-file", "-directory", "-attributes", "-hidden", "-readonly", "-system", "-depth", "-af", "-ad", "-ah", "-as", "-followsymlink")
DENIED_PARAMETERS = {
    "get-childitem": _GCI, "gci": _GCI, "dir": _GCI, "ls": _GCI,
    "get-content": ("-raw", "-asbytestream"), "gc": ("-raw", "-asbytestream"), "cat": ("-raw",), "type": ("-raw",),
    "set-content": ("-nonewline", "-asbytestream"), "add-content": ("-nonewline", "-asbytestream"), "out-file": ("-nonewline",),
    "out-string": ("-nonewline",), "convertfrom-stringdata": ("-delimiter",), "join-path": ("-additionalchildpath",),
    "split-path": ("-leafbase", "-extension"), "get-date": ("-asutc", "-fromunixtime"),
    "select-object": ("-skiplast", "-skipindex"), "test-path": ("-newerthan", "-olderthan"),
    "import-module": ("-usewindowspowershell",),
}
# Common parameters added after 2.0 (any command).
DENIED_COMMON_PARAMETERS = {"-pipelinevariable": "PowerShell 4.0+", "-pv": "PowerShell 4.0+", "-informationaction": "PowerShell 5.0+",
                            "-infa": "PowerShell 5.0+", "-informationvariable": "PowerShell 5.0+", "-iv": "PowerShell 5.0+"}
DENIED_OPERATORS = {"-in": "-in is PowerShell 3.0+", "-notin": "-notin is PowerShell 3.0+", "-cin": "PowerShell 3.0+",
                    "-cnotin": "PowerShell 3.0+", "-iin": "PowerShell 3.0+", "-inotin": "PowerShell 3.0+",
                    "-shl": "-shl is PowerShell 3.0+", "-shr": "-shr is PowerShell 3.0+"}
DENIED_TYPES = {"ordered": "[ordered] is PowerShell 3.0+", "pscustomobject": "[pscustomobject] is PowerShell 3.0+",
                "system.management.automation.pscustomobject": "casting to PSCustomObject is PowerShell 3.0+",
                "ciminstance": "CIM types are PowerShell 3.0+", "cimclass": "CIM types are PowerShell 3.0+",
                "cimtype": "CIM types are PowerShell 3.0+", "cimsession": "CIM types are PowerShell 3.0+",
                "cimconverter": "CIM types are PowerShell 3.0+", "nullstring": "[NullString] is PowerShell 3.0+",
                "argumentcompleter": "PowerShell 5.0+", "supportswildcards": "PowerShell 3.0+",
                "validatetrusteddata": "PowerShell 5.1+", "norunspaceaffinity": "PowerShell 7.4+"}
DENIED_TYPE_PREFIXES = ("microsoft.management.infrastructure.",)
DENIED_VARIABLES = {"psitem": "$PSItem is PowerShell 3.0+", "psscriptroot": "$PSScriptRoot outside modules is PowerShell 3.0+",
                    "pscommandpath": "$PSCommandPath is PowerShell 3.0+", "psdefaultparametervalues": "PowerShell 3.0+",
                    "iswindows": "PowerShell 6+", "islinux": "PowerShell 6+", "ismacos": "PowerShell 6+", "iscoreclr": "PowerShell 6+",
                    "psstyle": "PowerShell 7.2+"}
DENIED_KEYWORDS = {"class": "the class keyword is PowerShell 5.0+", "enum": "the enum keyword is PowerShell 5.0+",
                   "using": "using namespace/module is PowerShell 5.0+", "workflow": "workflows are PowerShell 3.0+",
                   "configuration": "DSC configurations are PowerShell 4.0+", "inlinescript": "workflows are PowerShell 3.0+",
                   "parallel": "workflows are PowerShell 3.0+", "sequence": "workflows are PowerShell 3.0+"}
DENIED_MEMBER_CALLS = {"foreach": ".ForEach() is PowerShell 4.0+", "where": ".Where() is PowerShell 4.0+"}
DENIED_PUNCTUATION = {"&&": "&& is PowerShell 7+", "||": "|| is PowerShell 7+", "??": "?? is PowerShell 7+",
                      "??=": "??= is PowerShell 7+", "?.": "?. is PowerShell 7+"}
# Where-Object / ForEach-Object take a script block in 2.0; anything else is the 3.0 simplified syntax.
SCRIPTBLOCK_COMMANDS = ("where-object", "where", "?", "foreach-object", "%")
SCRIPTBLOCK_PARAMETERS = ("-filterscript", "-process", "-begin", "-end", "-inputobject")


class Token(object):
    """kind: comment, string, variable, splat, type, dash, word, member, number, punct, newline."""

    def __init__(self, kind, text, line, value=None, command=False, static=False, glued=False):
        self.kind = kind
        self.text = text
        self.line = line
        self.value = value if value is not None else text
        self.command = command          # a word in command position (a command or keyword name)
        self.static = static            # a member reached with ::
        self.glued = glued              # no whitespace before this token

    def __repr__(self):
        return "Token(%s, %r, line %d%s)" % (self.kind, self.value, self.line, ", command" if self.command else "")


class PowerShellSyntaxError(ValueError):
    """The text cannot be tokenized (unterminated string, comment or here-string)."""


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<name>(?:[A-Za-z_][A-Za-z0-9_]*:)?[A-Za-z0-9_]+)|(?P<special>[$?^_]))")
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)[lLdD]?(?:[kKmMgGtTpP][bB])?(?![A-Za-z0-9_])")
_TYPE_BODY = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.`+]*(?:\s*\[[A-Za-z0-9_.`+,\s\[\]]*\])*\s*$")
_WORD_END = set(" \t\r\n(){};,|&'\"`<>]$=" + SINGLE_QUOTES + DOUBLE_QUOTES)
_OPENERS = {"(": ")", "{": "}", "[": "]", "@(": ")", "@{": "}", "$(": ")"}
_COMMAND_START = {"(", "{", ";", "|", "@(", "$(", "=", "&&", "||", "&", "."}
_STATEMENT_KEYWORDS = ("else", "try", "finally", "return", "throw", "do", "begin", "process", "end", "exit")
_VALUE_END = ("variable", "string", "member", "type", "number")


class _Tokenizer(object):
    def __init__(self, text, line=1):
        self.text = text
        self.pos = 0
        self.line = line
        self.tokens = []
        self.command_position = True
        self.brackets = []

    def error(self, message):
        raise PowerShellSyntaxError("line %d: %s" % (self.line, message))

    def add(self, kind, text, value=None, glued=False, **flags):
        token = Token(kind, text, self.line, value, glued=glued, **flags)
        self.tokens.append(token)
        self.line += text.count("\n")
        return token

    def previous(self):
        for token in reversed(self.tokens):
            if token.kind not in ("comment",):
                return token
        return None

    def value_before(self):
        """True when the previous token ends a value and touches this position (indexing / member access)."""
        prev = self.previous()
        if prev is None or self.pos == 0 or self.text[self.pos - 1] in " \t\r\n":
            return False
        return prev.kind in _VALUE_END or (prev.kind == "punct" and prev.text in (")", "]", "}")) or (
            prev.kind == "word" and not prev.command)

    def run(self):
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            glued = self.pos > 0 and text[self.pos - 1] not in " \t\r\n"
            if char in " \t":
                self.pos += 1
            elif char == "`" and text[self.pos + 1:self.pos + 2] in ("\n", "\r"):
                self.pos += 1                                   # line continuation
                while self.pos < len(text) and text[self.pos] in "\r\n":
                    if text[self.pos] == "\n":
                        self.line += 1
                    self.pos += 1
            elif char in "\r\n":
                self.pos += 1
                if char == "\n":
                    self.add("newline", "", "\n")
                    self.line += 1
                    self.command_position = not self.in_hashtable()
            elif char == "#":
                end = text.find("\n", self.pos)
                end = len(text) if end < 0 else end
                self.add("comment", text[self.pos:end])
                self.pos = end
            elif text.startswith("<#", self.pos):
                end = text.find("#>", self.pos + 2)
                if end < 0:
                    self.error("unterminated <# comment")
                self.add("comment", text[self.pos:end + 2])
                self.pos = end + 2
            elif char == "@" and text[self.pos + 1:self.pos + 2] in (SINGLE_QUOTES + DOUBLE_QUOTES) and \
                    text[self.pos + 2:self.pos + 4].lstrip(" \t")[:1] in ("\n", "\r"):
                self.here_string()
            elif char in SINGLE_QUOTES:
                self.single_quoted(glued)
            elif char in DOUBLE_QUOTES:
                self.double_quoted(glued)
            elif char == "$" and text[self.pos + 1:self.pos + 2] == "(":
                self.punct("$(", glued)
            elif char == "$":
                match = _VARIABLE.match(text, self.pos)
                if not match:
                    self.error("bad variable")
                name = match.group("braced") or match.group("name") or match.group("special")
                self.add("variable", match.group(0), name.lower(), glued=glued)
                self.pos = match.end()
                self.command_position = False
            elif char == "@" and text[self.pos + 1:self.pos + 2] in ("(", "{"):
                self.punct(text[self.pos:self.pos + 2], glued)
            elif char == "@" and re.match(r"@[A-Za-z_]", text[self.pos:self.pos + 2]):
                match = re.compile(r"@[A-Za-z0-9_]+").match(text, self.pos)
                self.add("splat", match.group(0), match.group(0)[1:].lower(), glued=glued)
                self.pos = match.end()
            elif char == "[" and not (self.value_before() and self.previous().kind != "type"):
                self.type_or_attribute(glued)
            elif char == ":" and text.startswith("::", self.pos):
                self.member(2, glued, static=True)
            elif char == "." and self.value_before() and re.match(r"\.[A-Za-z_]", text[self.pos:self.pos + 2]):
                self.member(1, glued)
            elif char in DASHES and re.match(r"[A-Za-z%]", text[self.pos + 1:self.pos + 2]):
                match = re.compile(u"[%s](?:[A-Za-z][A-Za-z0-9_]*|%%)" % DASHES).match(text, self.pos)
                self.add("dash", match.group(0), "-" + match.group(0)[1:].lower(), glued=glued)
                self.pos = match.end()
            elif char.isdigit() or (char == "." and text[self.pos + 1:self.pos + 2].isdigit()):
                match = _NUMBER.match(text, self.pos)
                if match:
                    self.add("number", match.group(0), glued=glued)
                    self.pos = match.end()
                    continue
                self.word(glued)
            elif text.startswith(("&&", "||", "??=", "??", "?."), self.pos) and not (
                    char == "?" and self.command_position and text[self.pos + 1:self.pos + 2] in " \t{"):
                token = next(t for t in ("&&", "||", "??=", "??", "?.") if text.startswith(t, self.pos))
                self.punct(token, glued)
            elif char in "(){}[];,|&=":
                self.punct(char, glued)
            elif char in "+*/%!<>":
                if char == "%" and self.command_position:
                    self.word(glued)
                    continue
                self.add("punct", char, glued=glued)
                self.pos += 1
                self.command_position = False
            else:
                self.word(glued)
        return self.tokens

    def in_hashtable(self):
        return bool(self.brackets) and self.brackets[-1] == "@{"

    def punct(self, text, glued):
        self.add("punct", text, glued=glued)
        self.pos += len(text)
        if text in _OPENERS:
            self.brackets.append(text)
        elif text in (")", "}", "]") and self.brackets:
            self.brackets.pop()
        # Inside @{ } a statement start holds a key, not a command.
        self.command_position = text in _COMMAND_START and not (text in (";", "@{") and self.in_hashtable())

    def word(self, glued):
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _WORD_END:
            if self.text[self.pos] == "." and self.pos > start and re.match(r"\.[A-Za-z_]", self.text[self.pos:self.pos + 2]) \
                    and not self.command_position:
                break
            if self.text[self.pos] == "[" and not self.command_position:
                break
            self.pos += 1
        if self.pos == start:
            self.pos += 1                                       # a lone character PowerShell would reject; keep going
        text = self.text[start:self.pos]
        is_command = self.command_position
        self.add("word", text, text.lower(), glued=glued, command=is_command)
        lowered = text.lower()
        # After a keyword that takes a statement or a pipeline, a command may follow.
        self.command_position = is_command and lowered in _STATEMENT_KEYWORDS

    def member(self, skip, glued, static=False):
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(self.text, self.pos + skip)
        if not match:
            self.error("bad member access")
        self.add("member", self.text[self.pos:match.end()], match.group(0).lower(), glued=glued, static=static)
        self.pos = match.end()
        self.command_position = False

    def type_or_attribute(self, glued):
        depth, end = 0, self.pos
        while end < len(self.text):
            if self.text[end] == "[":
                depth += 1
            elif self.text[end] == "]":
                depth -= 1
                if depth == 0:
                    break
            elif self.text[end] in "\n(\"'":
                end = -1
                break
            end += 1
        body = self.text[self.pos + 1:end] if end > self.pos else ""
        if end > self.pos and _TYPE_BODY.match(body):
            self.add("type", self.text[self.pos:end + 1], re.sub(r"\s+", "", body).lower(), glued=glued)
            self.pos = end + 1
            self.command_position = False
        else:
            self.punct("[", glued)                              # an attribute such as [Parameter(...)]

    def single_quoted(self, glued):
        start, pos = self.pos, self.pos + 1
        while True:
            if pos >= len(self.text):
                self.error("unterminated string")
            if self.text[pos] in SINGLE_QUOTES:
                if self.text[pos + 1:pos + 2] in SINGLE_QUOTES and self.text[pos + 1:pos + 2]:
                    pos += 2
                    continue
                break
            pos += 1
        self.add("string", self.text[start:pos + 1], self.text[start + 1:pos], glued=glued)
        self.pos = pos + 1
        self.command_position = False

    def double_quoted(self, glued):
        start, pos = self.pos, self.pos + 1
        inner = []
        while True:
            if pos >= len(self.text):
                self.error("unterminated string")
            char = self.text[pos]
            if char == "`":
                pos += 2
                continue
            if char in DOUBLE_QUOTES:
                if self.text[pos + 1:pos + 2] in DOUBLE_QUOTES and self.text[pos + 1:pos + 2]:
                    pos += 2
                    continue
                break
            if char == "$" and self.text[pos + 1:pos + 2] == "(":
                end = _subexpression_end(self.text, pos + 1)
                inner.append((pos + 2, end))
                pos = end + 1
                continue
            pos += 1
        line = self.line
        self.add("string", self.text[start:pos + 1], self.text[start + 1:pos], glued=glued)
        for begin, end in inner:
            self.tokens.extend(_Tokenizer(self.text[begin:end], line + self.text.count("\n", start, begin)).run())
        self.pos = pos + 1
        self.command_position = False

    def here_string(self):
        quote = self.text[self.pos + 1]
        closing = "\n" + ("'" if quote in SINGLE_QUOTES else '"') + "@"
        end = self.text.find(closing, self.pos + 2)
        if end < 0:
            self.error("unterminated here-string")
        line = self.line
        body = self.text[self.pos:end + len(closing)]
        self.add("string", body, body[2:-2])
        if quote in DOUBLE_QUOTES:
            pos = self.pos
            while True:
                pos = self.text.find("$(", pos, end)
                if pos < 0:
                    break
                close = _subexpression_end(self.text, pos + 1)
                self.tokens.extend(_Tokenizer(self.text[pos + 2:close], line + self.text.count("\n", self.pos, pos)).run())
                pos = close + 1
        self.pos = end + len(closing)
        self.command_position = False


def _subexpression_end(text, open_pos):
    """Index of the ')' closing the '(' at open_pos, skipping nested strings and parentheses."""
    depth, pos = 0, open_pos
    while pos < len(text):
        char = text[pos]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos
        elif char in SINGLE_QUOTES:
            pos = text.find(char, pos + 1)
            if pos < 0:
                break
        elif char in DOUBLE_QUOTES:
            pos += 1
            while pos < len(text) and text[pos] not in DOUBLE_QUOTES:
                pos += 2 if text[pos] == "`" else 1
        pos += 1
    raise PowerShellSyntaxError("unterminated $( ) in a string")


def tokenize(text):
    """The tokens of a PowerShell text (see Token)."""
    return _Tokenizer(text).run()


def _significant(tokens, index):
    """The next token after ``index`` that is not a comment (newlines count)."""
    for token in tokens[index + 1:]:
        if token.kind != "comment":
            return token
    return None


def check_powershell2(text):
    """[(line, problem)] of every PowerShell 3.0+ construct and unbalanced bracket in ``text``; [] when clean."""
    try:
        tokens = tokenize(text)
    except PowerShellSyntaxError as exc:
        return [(0, str(exc))]
    problems = []
    command = None                                              # the command governing the current pipeline element
    stack = []
    for index, token in enumerate(tokens):
        following = _significant(tokens, index)
        if token.kind == "newline" or (token.kind == "punct" and token.text in (";", "|", "{", "}", "(", ")", "@(", "$(")):
            command = None
        if token.kind == "word" and token.command:
            name = token.value
            if name == "foreach" and following is not None and following.kind == "punct" and following.text == "(":
                pass                                            # the foreach statement
            elif name in KEYWORDS and name != "foreach":
                if name in DENIED_KEYWORDS:
                    problems.append((token.line, DENIED_KEYWORDS[name]))
            else:
                command = name
                if name in DENIED_COMMANDS:
                    problems.append((token.line, "%s: %s" % (token.text, DENIED_COMMANDS[name])))
                for pattern, reason in DENIED_COMMAND_PATTERNS:
                    if pattern.match(name):
                        problems.append((token.line, "%s: %s" % (token.text, reason)))
                if name in SCRIPTBLOCK_COMMANDS or name == "foreach":
                    ok = following is not None and ((following.kind == "punct" and following.text == "{") or (
                        following.kind == "dash" and following.value in SCRIPTBLOCK_PARAMETERS))
                    if not ok:
                        problems.append((token.line, "%s without a script block: simplified syntax is PowerShell 3.0+" % token.text))
        elif token.kind == "dash":
            if token.value in DENIED_OPERATORS:
                problems.append((token.line, DENIED_OPERATORS[token.value]))
            if token.value in DENIED_COMMON_PARAMETERS:
                problems.append((token.line, "%s: %s" % (token.text, DENIED_COMMON_PARAMETERS[token.value])))
            if command and token.value in DENIED_PARAMETERS.get(command, ()):
                problems.append((token.line, "%s %s: parameter added after PowerShell 2.0" % (command, token.text)))
            if token.value in ("-erroraction", "-ea") and following is not None and following.value.lower() == "ignore":
                problems.append((token.line, "-ErrorAction Ignore is PowerShell 3.0+"))
        elif token.kind == "type":
            if token.value in DENIED_TYPES:
                problems.append((token.line, DENIED_TYPES[token.value]))
            elif token.value.startswith(DENIED_TYPE_PREFIXES):
                problems.append((token.line, "%s: CIM .NET types are PowerShell 3.0+" % token.text))
        elif token.kind == "variable":
            scope = token.value.split(":", 1)[0] if ":" in token.value else None
            if token.value in DENIED_VARIABLES:
                problems.append((token.line, DENIED_VARIABLES[token.value]))
            if scope == "using":
                problems.append((token.line, "$using: is PowerShell 3.0+"))
        elif token.kind == "member":
            called = following is not None and following.kind == "punct" and following.text == "(" and following.glued
            if called and token.static and token.value == "new":
                problems.append((token.line, "::new() is PowerShell 5.0+"))
            if called and not token.static and token.value in DENIED_MEMBER_CALLS:
                problems.append((token.line, DENIED_MEMBER_CALLS[token.value]))
        elif token.kind == "punct":
            if token.text in DENIED_PUNCTUATION:
                problems.append((token.line, DENIED_PUNCTUATION[token.text]))
            elif token.text in _OPENERS:
                stack.append(token)
            elif token.text in (")", "}", "]"):
                if not stack or _OPENERS[stack[-1].text] != token.text:
                    problems.append((token.line, "unbalanced %r" % token.text))
                else:
                    stack.pop()
    for token in stack:
        problems.append((token.line, "%r is never closed" % token.text))
    return problems
