"""Example commands, most from RFC 9051 §6 and the extensions' RFCs, and what they parse to."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mailhouse.proto.imap import commands as c
from mailhouse.proto.imap import search as s
from mailhouse.proto.imap.events import AppendData, Command, ContinuationNeeded
from mailhouse.proto.imap.fetch import FetchAttribute, Section
from mailhouse.proto.imap.sequence import STAR, SequenceSet
from tests.proto.imap.driver import command, drive


@pytest.mark.parametrize("name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "NAMESPACE",
                                  "UNSELECT", "CLOSE", "CHECK", "EXPUNGE"])
def test_no_arguments(name: str) -> None:
    cmd = command(b"a001 " + name.lower().encode() + b"\r\n")
    assert (cmd.tag, cmd.name, cmd.args, cmd.uid) == ("a001", name, c.NoArguments(), False)


def test_login_quoted_and_literal() -> None:
    assert command(b'a001 LOGIN SMITH SESAME\r\n').args == c.Login("SMITH", "SESAME")
    cmd = command(b'a LOGIN "fred \\"f\\" foo" {4}\r\np\\w"\r\n')
    assert cmd.args == c.Login('fred "f" foo', 'p\\w"')
    assert "p\\w" not in repr(cmd.args)


def test_authenticate_with_and_without_initial_response() -> None:
    assert command(b"A01 AUTHENTICATE plain\r\n").args == c.Authenticate("PLAIN")
    assert command(b"A01 AUTHENTICATE PLAIN AGZyZWQAcHc=\r\n").args == \
        c.Authenticate("PLAIN", b"AGZyZWQAcHc=")
    assert command(b"A01 AUTHENTICATE PLAIN =\r\n").args == c.Authenticate("PLAIN", b"=")


def test_select_examine_condstore_qresync() -> None:
    assert command(b"A142 SELECT INBOX\r\n").args == c.Select("INBOX")
    assert command(b"A142 select inbox\r\n").args == c.Select("INBOX")
    assert command(b"a examine blurdybloop\r\n").args == c.Select("blurdybloop", True)
    assert command(b"a SELECT INBOX (CONDSTORE)\r\n").args == c.Select("INBOX", condstore=True)
    # RFC 7162 §3.2.5.2
    cmd = command(b"A02 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))\r\n")
    assert cmd.args == c.Select("INBOX", qresync=c.QResync(
        67890007, 90060115194045000, SequenceSet(((41, 211), (214, 541)))))
    cmd = command(b"B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 "
                  b"(5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976:29997)))\r\n")
    assert isinstance(cmd.args, c.Select) and cmd.args.qresync is not None
    assert cmd.args.qresync.seq_match is not None
    assert str(cmd.args.qresync.seq_match[0]) == "5000,7500,9000,9990:9999"
    cmd = command(b"a SELECT x (QRESYNC (1 2 (1:5 10:14)))\r\n")
    assert isinstance(cmd.args, c.Select) and cmd.args.qresync == c.QResync(
        1, 2, None, (SequenceSet(((1, 5),)), SequenceSet(((10, 14),))))


def test_create_with_use_and_mailbox_commands() -> None:
    assert command(b"t1 CREATE MySpecial (USE (\\Drafts \\Sent))\r\n").args == \
        c.Create("MySpecial", ("\\Drafts", "\\Sent"))
    assert command(b"A003 CREATE owatagusiam/\r\n").args == c.Create("owatagusiam")
    assert command(b"A683 DELETE blurdybloop\r\n").args == c.MailboxArgument("blurdybloop")
    assert command(b"A683 RENAME blurdybloop sarasoop\r\n").args == \
        c.Rename("blurdybloop", "sarasoop")
    assert command(b"A002 SUBSCRIBE #news.comp.mail.mime\r\n").args == \
        c.MailboxArgument("#news.comp.mail.mime")
    assert command(b"A002 UNSUBSCRIBE \"a b\"\r\n").args == c.MailboxArgument("a b")
    assert command(b"G GETQUOTAROOT INBOX\r\n").args == c.MailboxArgument("INBOX")


def test_list_basic_and_extended() -> None:
    assert command(b'A101 LIST "" ""\r\n').args == c.ListMailboxes("", ("",))
    assert command(b"A202 LIST ~/Mail/ %\r\n").args == c.ListMailboxes("~/Mail/", ("%",))
    assert command(b'A LSUB "#news." "comp.mail.*"\r\n').args == \
        c.ListMailboxes("#news.", ("comp.mail.*",))
    cmd = command(b'A01 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Drafts" %) '
                  b"RETURN (CHILDREN STATUS (MESSAGES UNSEEN SIZE))\r\n")
    assert cmd.args == c.ListMailboxes(
        "", ("INBOX", "Drafts", "%"), ("SUBSCRIBED", "RECURSIVEMATCH"),
        ("CHILDREN", "STATUS"), ("MESSAGES", "UNSEEN", "SIZE"), True)
    assert command(b'a LIST (SPECIAL-USE) "" *\r\n').args == \
        c.ListMailboxes("", ("*",), ("SPECIAL-USE",), extended=True)
    assert command(b'a LIST "" * RETURN ()\r\n').args == \
        c.ListMailboxes("", ("*",), extended=True)


def test_status_enable_id_quota_namespace() -> None:
    assert command(b"A042 STATUS blurdybloop (UIDNEXT MESSAGES SIZE APPENDLIMIT)\r\n").args == \
        c.Status("blurdybloop", ("UIDNEXT", "MESSAGES", "SIZE", "APPENDLIMIT"))
    assert command(b"t ENABLE CONDSTORE qresync\r\n").args == c.Enable(("CONDSTORE", "QRESYNC"))
    assert command(b"a023 ID NIL\r\n").args == c.Id(None)
    assert command(b'a023 ID ("name" "sodr" "version" "19.34" "vendor" NIL)\r\n').args == \
        c.Id((("name", "sodr"), ("version", "19.34"), ("vendor", None)))
    assert command(b'G GETQUOTA ""\r\n').args == c.GetQuota("")
    assert command(b'S SETQUOTA "" (STORAGE 512 MESSAGE 100)\r\n').args == \
        c.SetQuota("", (("STORAGE", 512), ("MESSAGE", 100)))


def test_search_rfc_examples() -> None:
    cmd = command(b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"\r\n')
    assert cmd.args == c.Search(s.And((
        s.FlagKey("\\Flagged"), s.DateKey("SINCE", date(1994, 2, 1)),
        s.Not(s.TextKey("FROM", b"Smith")))))
    cmd = command(b"A283 SEARCH TEXT \"string not in mailbox\"\r\n")
    assert cmd.args == c.Search(s.TextKey("TEXT", b"string not in mailbox"))
    cmd = command(b"A284 SEARCH CHARSET UTF-8 TEXT {12}\r\n\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa"
                  b"\x9e\xe3\x81\xae\r\n")
    assert cmd.args == c.Search(s.TextKey("TEXT", "日本語の".encode()), "UTF-8")
    cmd = command(b"a UID SEARCH OR (1:3 UNSEEN) (KEYWORD $Junk HEADER X-Spam yes) "
                  b"LARGER 100 SMALLER 5 UID 5,* SENTON \"3-Mar-2020\" OLDER 60\r\n")
    assert cmd.uid and isinstance(cmd.args, c.Search)
    assert cmd.args.key == s.And((
        s.Or(s.And((s.SequenceKey(SequenceSet(((1, 3),))), s.FlagKey("\\Seen", False))),
             s.And((s.FlagKey("$Junk"), s.HeaderKey("X-Spam", b"yes")))),
        s.SizeKey(True, 100), s.SizeKey(False, 5), s.UidKey(SequenceSet(((5, 5), (STAR, STAR)))),
        s.DateKey("ON", date(2020, 3, 3), sent=True), s.AgeKey(True, 60)))


def test_search_return_options_and_modseq() -> None:
    cmd = command(b"A301 SEARCH RETURN (MIN COUNT) UNSEEN\r\n")
    assert cmd.args == c.Search(s.FlagKey("\\Seen", False), None,
                                c.SearchReturn(("MIN", "COUNT")))
    assert command(b"A SEARCH RETURN () ALL\r\n").args == \
        c.Search(s.All(), None, c.SearchReturn(()))
    cmd = command(b"A SEARCH RETURN (SAVE PARTIAL -1:-100) $\r\n")
    assert cmd.args == c.Search(s.SequenceKey(SequenceSet(saved=True)), None,
                                c.SearchReturn(("SAVE",), (-1, -100)))
    cmd = command(b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338\r\n')
    assert cmd.args == c.Search(s.ModSeqKey(620162338, "/flags/\\draft", "all"))
    assert command(b"a SEARCH MODSEQ 5\r\n").args == c.Search(s.ModSeqKey(5))
    for key in ("ANSWERED", "DELETED", "DRAFT", "NEW", "OLD", "RECENT", "SEEN",
                "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED"):
        assert isinstance(command(b"a SEARCH " + key.encode() + b"\r\n").args, c.Search)
    for key in ("BCC", "BODY", "CC", "SUBJECT", "TO"):
        assert command(b"a SEARCH " + key.encode() + b" x\r\n").args == \
            c.Search(s.TextKey(key, b"x"))
    assert command(b"a SEARCH UNKEYWORD $x YOUNGER 5 BEFORE 29-Feb-2024\r\n").args == \
        c.Search(s.And((s.FlagKey("$x", False), s.AgeKey(False, 5),
                        s.DateKey("BEFORE", date(2024, 2, 29)))))


def test_fetch_rfc_examples() -> None:
    cmd = command(b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n")
    assert cmd.args == c.Fetch(SequenceSet(((2, 4),)), (
        FetchAttribute("FLAGS"),
        FetchAttribute("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM")))))
    cmd = command(b"a FETCH 1 full\r\n")
    assert isinstance(cmd.args, c.Fetch)
    assert [a.name for a in cmd.args.attributes] == \
        ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
    cmd = command(b"a FETCH * BODY.PEEK[1.2.MIME]<10.20>\r\n")
    assert isinstance(cmd.args, c.Fetch)
    assert cmd.args.attributes == (FetchAttribute("BODY", Section((1, 2), "MIME"), (10, 20),
                                                  True),)
    cmd = command(b"a FETCH 1 (BINARY.PEEK[1]<0.5> BINARY.SIZE[] BODY[] BODY[3] "
                  b"BODY[TEXT] BODY[2.HEADER.FIELDS.NOT (X-A)] RFC822.HEADER UID MODSEQ)\r\n")
    assert isinstance(cmd.args, c.Fetch)
    assert cmd.args.attributes == (
        FetchAttribute("BINARY", Section((1,)), (0, 5), True),
        FetchAttribute("BINARY.SIZE", Section()), FetchAttribute("BODY", Section()),
        FetchAttribute("BODY", Section((3,))), FetchAttribute("BODY", Section((), "TEXT")),
        FetchAttribute("BODY", Section((2,), "HEADER.FIELDS.NOT", ("X-A",))),
        FetchAttribute("RFC822.HEADER"), FetchAttribute("UID"), FetchAttribute("MODSEQ"))
    cmd = command(b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert cmd.uid and cmd.args == c.Fetch(SequenceSet(((1, STAR),)), (FetchAttribute("FLAGS"),),
                                           12345, True)


def test_store_copy_move_expunge() -> None:
    assert command(b"A003 STORE 2:4 +FLAGS (\\Deleted)\r\n").args == \
        c.Store(SequenceSet(((2, 4),)), "+", False, ("\\Deleted",))
    assert command(b"a STORE 1 -flags.silent \\seen $Label1\r\n").args == \
        c.Store(SequenceSet(((1, 1),)), "-", True, ("\\Seen", "$Label1"))
    assert command(b"d105 STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)"
                   b"\r\n").args == c.Store(SequenceSet(((7, 7), (5, 5), (9, 9))), "+", True,
                                             ("\\Deleted",), 320162338)
    assert command(b"a STORE 1 FLAGS ()\r\n").args == \
        c.Store(SequenceSet(((1, 1),)), "", False, ())
    assert command(b"A003 COPY 2:4 MEETING\r\n").args == \
        c.Copy(SequenceSet(((2, 4),)), "MEETING")
    cmd = command(b"a UID MOVE 42:69 foo\r\n")
    assert (cmd.name, cmd.uid, cmd.args) == ("MOVE", True, c.Copy(SequenceSet(((42, 69),)), "foo"))
    cmd = command(b"A003 UID EXPUNGE 3000:3002\r\n")
    assert (cmd.name, cmd.args) == ("EXPUNGE", c.Expunge(SequenceSet(((3000, 3002),))))


def test_sort_and_thread() -> None:
    cmd = command(b"A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL\r\n")
    assert cmd.args == c.Sort((("SUBJECT", False), ("DATE", True)), "UTF-8", s.All())
    cmd = command(b'A285 SORT (SUBJECT) US-ASCII TEXT "not in mailbox"\r\n')
    assert cmd.args == c.Sort((("SUBJECT", False),), "US-ASCII",
                              s.TextKey("TEXT", b"not in mailbox"))
    cmd = command(b"a UID SORT RETURN (MIN MAX) (DISPLAYFROM) UTF-8 UNDELETED\r\n")
    assert cmd.uid and cmd.args == c.Sort((("DISPLAYFROM", False),), "UTF-8",
                                          s.FlagKey("\\Deleted", False),
                                          c.SearchReturn(("MIN", "MAX")))
    cmd = command(b"A283 THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000\r\n")
    assert cmd.args == c.Thread("ORDEREDSUBJECT", "UTF-8", s.DateKey("SINCE", date(2000, 3, 5)))


def test_append_rfc_example_streams_the_message() -> None:
    message = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar\r\n"
               b"Subject: afternoon meeting\r\n\r\nHello Joe\r\n")
    head = b'A003 APPEND saved-messages (\\Seen) " 7-Feb-1994 21:52:25 -0800" {%d}\r\n' % len(
        message)
    events = drive([head, message[:10], message[10:], b"\r\n"])
    zone = timezone(-timedelta(hours=8))
    assert events[0] == ContinuationNeeded("A003", len(message), True)
    assert events[1:3] == [AppendData("A003", 0, message[:10], False),
                           AppendData("A003", 0, message[10:], True)]
    assert events[3] == Command("A003", "APPEND", c.Append("saved-messages", (c.AppendMessage(
        0, len(message), ("\\Seen",), datetime(1994, 2, 7, 21, 52, 25, tzinfo=zone)),)))


def test_multiappend_literal_plus_literal8_and_mailbox_literal() -> None:
    events = drive([b"a APPEND {5+}\r\nINBOX {3+}\r\nabc ~{2+}\r\n\x00b (\\Draft) {0+}\r\n"
                    b"\r\n"])
    assert events == [
        AppendData("a", 0, b"abc", True), AppendData("a", 1, b"\x00b", True),
        AppendData("a", 2, b"", True),
        Command("a", "APPEND", c.Append("INBOX", (
            c.AppendMessage(0, 3), c.AppendMessage(1, 2, binary=True),
            c.AppendMessage(2, 0, ("\\Draft",)))))]


def test_idle_and_done() -> None:
    events = drive([b"A IDLE\r\n", b"DONE\r\n", b"B IDLE\r\nnope\r\nC NOOP\r\n"])
    assert [type(e).__name__ for e in events] == ["Command", "IdleDone", "Command", "IdleDone",
                                                   "Command"]
    assert [getattr(e, "valid", None) for e in events] == [None, True, None, False, None]


def test_authenticate_exchange_lines() -> None:
    events = drive([b"A AUTHENTICATE PLAIN\r\n", b"AGFsaWNlAHB3\r\nB NOOP\r\n"])
    assert [type(e).__name__ for e in events] == ["Command", "SaslResponse", "Command"]


def test_pause_buffers_until_answered() -> None:
    from mailhouse.proto.imap.parser import CommandParser

    parser = CommandParser()
    assert parser.feed(b"A IDLE\r\nDONE\r\n")[0].name == "IDLE"  # type: ignore[union-attr]
    assert parser.paused and parser.feed(b"B NOOP\r\n") == []
    assert [type(e).__name__ for e in parser.start_idle()] == ["IdleDone", "Command"]
    with pytest.raises(RuntimeError):
        parser.accept_literal()


def test_refused_literal_drops_the_command() -> None:
    events = drive([b"A LOGIN {5}\r\n", b"B NOOP\r\n"], accept=False)
    assert events[0] == ContinuationNeeded("A", 5, False)
    assert isinstance(events[1], Command) and events[1].tag == "B"


def test_lf_alone_ends_a_line_and_empty_lines_are_ignored() -> None:
    events = drive([b"\r\n\na NOOP\nb NOOP\r\n"])
    assert [e.tag for e in events if isinstance(e, Command)] == ["a", "b"]


def test_utf8_mailbox_names_when_enabled() -> None:
    from mailhouse.proto.imap.parser import CommandParser

    parser = CommandParser()
    assert parser.feed(b"a SELECT &ZeVnLIqe-\r\n")[0].args == c.Select("日本語")  # type: ignore[union-attr]
    parser.utf8 = True
    assert parser.feed('a SELECT "日本語"\r\n'.encode())[0].args == c.Select("日本語")  # type: ignore[union-attr]
