"""The command grammar (RFC 9051 §9 and the extensions' ABNF): a whole command, already split
into text and literals (lexer.Reader), into typed arguments (commands.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from mailhouse.proto.imap import commands as c
from mailhouse.proto.imap import fetch, mailbox, values
from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.lexer import MessageRef, ParseError, Part, Reader
from mailhouse.proto.imap.search import SearchKey, SearchParser
from mailhouse.proto.imap.sequence import SequenceSet

_SASL_MECHANISM = re.compile(rb"[A-Za-z0-9_-]{1,20}")  # RFC 4422 §3.1
_BASE64 = re.compile(rb"=|(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_COMMAND = re.compile(rb"[A-Za-z]+")
STATUS_ITEMS = frozenset({"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                          "RECENT", "HIGHESTMODSEQ", "APPENDLIMIT"})
SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE"})
SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM",
                       "DISPLAYTO"})
LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
NO_ARGUMENTS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "NAMESPACE", "IDLE",
                          "UNSELECT", "CLOSE", "CHECK", "EXPUNGE"})
UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT",
                          "THREAD"})


@dataclass(frozen=True, slots=True)
class Parsed:
    tag: str
    name: str
    uid: bool
    args: c.Arguments


def head(reader: Reader) -> tuple[str, str, bool]:
    """tag SP [UID SP] command-name; raises ParseError for anything but a known command."""
    tag = reader.tag().decode("ascii")
    reader.sp()
    name = reader.match(_COMMAND, "a command name").decode("ascii").upper()
    uid = name == "UID"
    if uid:
        reader.sp()
        name = reader.match(_COMMAND, "a command name").decode("ascii").upper()
        if name not in UID_COMMANDS:
            raise ParseError(f"UID {name} is not a command")
    if name not in _PARSERS and name not in NO_ARGUMENTS:
        raise ParseError(f"Unknown command {name}")
    return tag, name, uid


def parse(parts: list[Part], config: ParserConfig, *, utf8: bool,
          utf8_append: bool = False) -> Parsed:
    """Parse a whole command. Raises ParseError (BAD) or PolicyError (NO). `utf8`: mailbox
    names are UTF-8; `utf8_append`: APPEND's UTF8 data item is allowed (UTF8=ACCEPT)."""
    reader = Reader(parts)
    tag, name, uid = head(reader)
    grammar = _Grammar(reader, config, utf8, utf8_append)
    if uid and name == "EXPUNGE":
        reader.sp()
        args: c.Arguments = c.Expunge(grammar.sequence_set())
    elif name in NO_ARGUMENTS:
        args = c.NoArguments()
    else:
        args = _PARSERS[name](grammar, name)
    reader.end()
    if isinstance(args, c.Fetch) and args.vanished and not uid:
        raise ParseError("VANISHED is for UID FETCH only")  # RFC 7162 §3.2.6
    return Parsed(tag, name, uid, args)


def check_append_prefix(parts: list[Part], config: ParserConfig, *, utf8: bool,
                        utf8_append: bool = False) -> bool:
    """Before an APPEND message literal is accepted: the text so far must be a valid APPEND up
    to that literal (the last part is lexer.PENDING). Raises like parse(). True when that
    literal stands inside "UTF8 (", where only a literal8 may (RFC 6855 §4)."""
    reader = Reader(parts)
    head(reader)
    grammar = _Grammar(reader, config, utf8, utf8_append)
    grammar.append_messages(stop_at_pending=True)
    return grammar.pending_utf8


class _Grammar:
    def __init__(self, reader: Reader, config: ParserConfig, utf8: bool,
                 utf8_append: bool = False) -> None:
        self.r = reader
        self.config = config
        self.utf8 = utf8
        self.utf8_append = utf8_append
        self.pending_utf8 = False  # the literal check_append_prefix stopped at is UTF8's

    # -- shared pieces -------------------------------------------------------------------------

    def mailbox(self, *, create: bool = False, new: bool = False) -> str:
        return mailbox.mailbox(self.r.astring(), utf8=self.utf8, delimiter=self.config.delimiter,
                               create=create, new=new)

    def pattern(self, wire: bytes) -> str:
        return mailbox.decode_name(wire, utf8=self.utf8)

    def sequence_set(self) -> SequenceSet:
        return values.sequence_set(self.r, self.config.max_sequence_items)

    def text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"{what} is not valid UTF-8") from exc

    def words(self, allowed: frozenset[str] | None = None) -> tuple[str, ...]:
        """"(" [atom *(SP atom)] ")" upper-cased, each in `allowed`."""
        self.r.expect(b"(")
        items: list[str] = []
        if not self.r.skip(b")"):
            items.append(self.r.word())
            while self.r.skip(b" "):
                items.append(self.r.word())
            self.r.expect(b")")
        for item in items:
            if allowed is not None and item not in allowed:
                raise ParseError(f"Unknown option {item}")
        return tuple(items)

    def search_return(self) -> c.SearchReturn:
        """RETURN "(" [option *(SP option)] ")" (RFC 4731 §3, RFC 5267 §4.4 PARTIAL)."""
        r = self.r
        r.expect(b"RETURN")
        r.sp()
        r.expect(b"(")
        options: list[str] = []
        partial = None
        while not r.skip(b")"):
            if options or partial:
                r.sp()
            word = r.word()
            if word == "PARTIAL":
                if partial is not None:  # RFC 5267 §4.4: one PARTIAL at most
                    raise ParseError("PARTIAL can be given only once")
                r.sp()
                partial = self._partial_range()
            elif word in SEARCH_RETURN:
                options.append(word)
            else:
                raise ParseError(f"Unknown RETURN option {word}")
        return c.SearchReturn(tuple(options), partial)

    def _partial_range(self) -> tuple[int, int]:
        sign = -1 if self.r.skip(b"-") else 1
        low = self.r.number(nonzero=True) * sign
        self.r.expect(b":")
        if sign < 0:
            self.r.expect(b"-")
        high = self.r.number(nonzero=True) * sign
        return low, high

    def charset(self) -> str:
        raw = self.r.quoted() if self.r.peek() == 0x22 else self.r.atom("a charset")
        return self.text(raw, "Charset").upper()

    def search_keys(self) -> SearchKey:
        return SearchParser(self.r, self.config.max_depth, self.config.max_sequence_items).keys()

    # -- commands ------------------------------------------------------------------------------

    def login(self, _name: str) -> c.Arguments:
        self.r.sp()
        user = self.text(self.r.astring(), "User name")
        self.r.sp()
        return c.Login(user, self.text(self.r.astring(), "Password"))

    def authenticate(self, _name: str) -> c.Arguments:
        self.r.sp()
        mechanism = self.r.match(_SASL_MECHANISM, "a SASL mechanism").decode("ascii").upper()
        initial = None
        if self.r.skip(b" "):
            initial = self.r.match(_BASE64, "an initial response")
            if not initial:
                raise ParseError("Expected an initial response")
        return c.Authenticate(mechanism, initial)

    def select(self, name: str) -> c.Arguments:
        r = self.r
        r.sp()
        box = self.mailbox()
        condstore, qresync = False, None
        if r.skip(b" ("):
            while True:
                word = r.word()
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC" and qresync is None:
                    r.sp()
                    qresync = self._qresync()
                else:
                    raise ParseError(f"Unknown SELECT parameter {word}")
                if not r.skip(b" "):
                    break
            r.expect(b")")
        return c.Select(box, name == "EXAMINE", condstore, qresync)

    def _qresync(self) -> c.QResync:
        r = self.r
        r.expect(b"(")
        uidvalidity = r.number(nonzero=True)
        r.sp()
        modseq = r.number(nonzero=True, wide=True)
        known = match = None
        if r.skip(b" "):
            if r.peek() != 0x28:
                known = self.sequence_set()
                if not r.skip(b" "):
                    r.expect(b")")
                    return c.QResync(uidvalidity, modseq, known)
            r.expect(b"(")
            sequences = self.sequence_set()
            r.sp()
            match = (sequences, self.sequence_set())
            r.expect(b")")
        r.expect(b")")
        return c.QResync(uidvalidity, modseq, known, match)

    def create(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        box = self.mailbox(create=True)
        use: list[str] = []
        if r.skip(b" ("):
            r.expect(b"USE")
            r.sp()
            r.expect(b"(")
            use.append(values.flag(r))
            while r.skip(b" "):
                use.append(values.flag(r))
            r.expect(b")")
            r.expect(b")")
            if any(not u.startswith("\\") for u in use):
                raise ParseError("USE takes special-use attributes")
        return c.Create(box, tuple(use))

    def one_mailbox(self, _name: str) -> c.Arguments:
        self.r.sp()
        return c.MailboxArgument(self.mailbox())

    def rename(self, _name: str) -> c.Arguments:
        self.r.sp()
        old = self.mailbox()
        self.r.sp()
        return c.Rename(old, self.mailbox(new=True))

    def list(self, name: str) -> c.Arguments:
        r = self.r
        r.sp()
        selection: tuple[str, ...] = ()
        extended = False
        if name == "LIST" and r.peek() == 0x28:
            selection, extended = self.words(LIST_SELECT), True
            r.sp()
        reference = self.pattern(r.astring())
        r.sp()
        if name == "LIST" and r.peek() == 0x28:
            r.expect(b"(")
            patterns = [self.pattern(r.list_mailbox())]
            while r.skip(b" "):
                patterns.append(self.pattern(r.list_mailbox()))
            r.expect(b")")
            extended = True
        else:
            patterns = [self.pattern(r.list_mailbox())]
        returns: list[str] = []
        status: tuple[str, ...] = ()
        if name == "LIST" and r.skip(b" "):
            extended = True
            r.expect(b"RETURN")
            r.sp()
            r.expect(b"(")
            while not r.skip(b")"):
                if returns:
                    r.sp()
                word = r.word()
                if word == "STATUS":
                    r.sp()
                    status = self.words(STATUS_ITEMS)
                elif word not in LIST_RETURN:
                    raise ParseError(f"Unknown LIST RETURN option {word}")
                returns.append(word)
        return c.ListMailboxes(reference, tuple(patterns), selection, tuple(returns), status,
                               extended)

    def status(self, _name: str) -> c.Arguments:
        self.r.sp()
        box = self.mailbox()
        self.r.sp()
        items = self.words(STATUS_ITEMS)
        if not items:
            raise ParseError("STATUS needs items")
        return c.Status(box, items)

    def append(self, _name: str) -> c.Arguments:
        return self.append_messages(stop_at_pending=False)

    def append_messages(self, *, stop_at_pending: bool) -> c.Append:
        """mailbox 1*(SP [flag-list SP] [date-time SP] (literal / "UTF8 (" literal8 ")"))
        (RFC 3502 §6.3.11; the UTF8 data item of RFC 6855 §4, only once UTF8=ACCEPT is
        enabled, a syntax error before)."""
        r = self.r
        r.sp()
        box = self.mailbox()
        messages: list[c.AppendMessage] = []
        while not messages or (r.peek() == 0x20 and not r.at_end()):
            r.sp()
            flags: tuple[str, ...] = ()
            if r.peek() == 0x28:
                flags = values.flag_list(r)
                if "\\Recent" in flags:
                    raise ParseError("\\Recent cannot be set")
                r.sp()
            internal_date = None
            if r.peek() == 0x22:
                internal_date = values.date_time(r)
                r.sp()
            utf8 = r.peek_ci(b"UTF8 (")
            if utf8:
                if not self.utf8_append:
                    raise ParseError("APPEND UTF8 needs ENABLE UTF8=ACCEPT")
                r.expect(b"UTF8 (")
            if stop_at_pending and r.at_pending():
                self.pending_utf8 = utf8
                return c.Append(box, tuple(messages))
            part = r.literal()
            if not isinstance(part, MessageRef):
                raise ParseError("Expected a message literal")
            if utf8:
                if not part.binary:
                    raise ParseError("UTF8 takes a literal8 (~{n})")
                r.expect(b")")
            messages.append(c.AppendMessage(part.index, part.size, flags, internal_date,
                                            part.binary, utf8))
        if stop_at_pending:
            raise ParseError("Expected a message literal")
        return c.Append(box, tuple(messages))

    def enable(self, _name: str) -> c.Arguments:
        caps = []
        while self.r.skip(b" "):
            caps.append(self.r.word())
        if not caps:
            raise ParseError("ENABLE needs capabilities")
        return c.Enable(tuple(caps))

    def id(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        if r.skip(b"NIL"):
            return c.Id(None)
        r.expect(b"(")
        params: list[tuple[str, str | None]] = []
        while not r.skip(b")"):
            if params:
                r.sp()
            key = self.text(r.string(), "ID field")
            r.sp()
            value = r.nstring()
            if len(params) >= 30 or len(key) > 30 or (value is not None and len(value) > 1024):
                raise ParseError("ID parameters beyond RFC 2971 §3.3's limits", "LIMIT")
            params.append((key, None if value is None else self.text(value, "ID value")))
        return c.Id(tuple(params))

    def getquota(self, _name: str) -> c.Arguments:
        self.r.sp()
        return c.GetQuota(self.text(self.r.astring(), "Quota root"))

    def setquota(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        root = self.text(r.astring(), "Quota root")
        r.sp()
        r.expect(b"(")
        limits: list[tuple[str, int]] = []
        while not r.skip(b")"):
            if limits:
                r.sp()
            resource = r.word()
            r.sp()
            limits.append((resource, r.number(wide=True)))
        return c.SetQuota(root, tuple(limits))

    def search(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        returns = None
        if r.peek_ci(b"RETURN "):
            returns = self.search_return()
            r.sp()
        charset = None
        if r.peek_ci(b"CHARSET "):
            r.expect(b"CHARSET ")
            charset = self.charset()
            r.sp()
        return c.Search(self.search_keys(), charset, returns)

    def fetch(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        sequence_set = self.sequence_set()
        r.sp()
        atts = fetch.attributes(r)
        changed_since, vanished = None, False
        if r.skip(b" ("):
            while True:
                word = r.word()
                if word == "CHANGEDSINCE" and changed_since is None:
                    r.sp()
                    changed_since = r.number(wide=True)
                elif word == "VANISHED" and not vanished:
                    vanished = True
                else:
                    raise ParseError(f"Unknown FETCH modifier {word}")
                if not r.skip(b" "):
                    break
            r.expect(b")")
        if vanished and changed_since is None:
            # RFC 7162 §3.2.6: VANISHED without CHANGEDSINCE is BAD (UID-only: see parse()).
            raise ParseError("VANISHED needs CHANGEDSINCE")
        return c.Fetch(sequence_set, atts, changed_since, vanished)

    def store(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        sequence_set = self.sequence_set()
        r.sp()
        unchanged_since = None
        if r.skip(b"("):
            r.expect(b"UNCHANGEDSINCE")
            r.sp()
            unchanged_since = r.number(wide=True)
            r.expect(b")")
            r.sp()
        mode = "+" if r.skip(b"+") else "-" if r.skip(b"-") else ""
        r.expect(b"FLAGS")
        silent = r.skip(b".SILENT")
        r.sp()
        flags = values.store_flags(r)
        return c.Store(sequence_set, mode, silent, flags, unchanged_since)

    def copy(self, _name: str) -> c.Arguments:
        self.r.sp()
        sequence_set = self.sequence_set()
        self.r.sp()
        return c.Copy(sequence_set, self.mailbox())

    def sort(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        returns = None
        if r.peek_ci(b"RETURN "):
            returns = self.search_return()
            r.sp()
        r.expect(b"(")
        criteria: list[tuple[str, bool]] = []
        while not r.skip(b")"):
            if criteria:
                r.sp()
            word = r.word()
            reverse = word == "REVERSE"
            if reverse:
                r.sp()
                word = r.word()
            if word not in SORT_KEYS:
                raise ParseError(f"Unknown sort key {word}")
            criteria.append((word, reverse))
        if not criteria:
            raise ParseError("SORT needs criteria")
        r.sp()
        charset = self.charset()
        r.sp()
        return c.Sort(tuple(criteria), charset, self.search_keys(), returns)

    def cancelupdate(self, _name: str) -> c.Arguments:
        """CANCELUPDATE 1*(SP quoted) (RFC 5267 §5)."""
        tags: list[str] = []
        while self.r.skip(b" "):
            tags.append(self.text(self.r.quoted(), "A tag"))
        if not tags:
            raise ParseError("CANCELUPDATE needs the tags of searching commands")
        return c.CancelUpdate(tuple(tags))

    def thread(self, _name: str) -> c.Arguments:
        r = self.r
        r.sp()
        algorithm = r.word()
        r.sp()
        charset = self.charset()
        r.sp()
        return c.Thread(algorithm, charset, self.search_keys())


_PARSERS: dict[str, Callable[[_Grammar, str], c.Arguments]] = {
    "LOGIN": _Grammar.login, "AUTHENTICATE": _Grammar.authenticate,
    "SELECT": _Grammar.select, "EXAMINE": _Grammar.select, "CREATE": _Grammar.create,
    "DELETE": _Grammar.one_mailbox, "SUBSCRIBE": _Grammar.one_mailbox,
    "UNSUBSCRIBE": _Grammar.one_mailbox, "GETQUOTAROOT": _Grammar.one_mailbox,
    "RENAME": _Grammar.rename, "LIST": _Grammar.list, "LSUB": _Grammar.list,
    "STATUS": _Grammar.status, "APPEND": _Grammar.append, "ENABLE": _Grammar.enable,
    "ID": _Grammar.id, "GETQUOTA": _Grammar.getquota, "SETQUOTA": _Grammar.setquota,
    "SEARCH": _Grammar.search, "FETCH": _Grammar.fetch, "STORE": _Grammar.store,
    "COPY": _Grammar.copy, "MOVE": _Grammar.copy, "SORT": _Grammar.sort,
    "THREAD": _Grammar.thread, "CANCELUPDATE": _Grammar.cancelupdate,
}
