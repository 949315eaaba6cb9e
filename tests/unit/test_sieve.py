"""Sieve: compiling scripts (sievelib parses, msgspool checks) and running them over messages: every
test and action, match types and comparators, implicit keep, duplicates, runtime errors, imap4flags
and the vacation action. Pure: no sockets, no files."""

from __future__ import annotations

import pytest

from msgspool.domain.sieve import DAY, Vacation, wildcard_match
from msgspool.errors import MsgspoolError
from msgspool.hooks.sieve import (
    SUPPORTED,
    Discard,
    Envelope,
    FileInto,
    Keep,
    Outcome,
    Redirect,
    Reject,
    SieveError,
    compile_script,
    evaluate,
    reject_reply,
)

ALL = 'require ["fileinto", "envelope", "reject", "ereject", "copy", "imap4flags", "vacation", "subaddress"];\n'
HEADERS = ("Return-Path: <ann@example.org>\r\n"
           "From: Ann Example <Ann@Example.ORG>\r\n"
           "To: Bob <bob+lists@example.net>, carol@example.com\r\n"
           "Cc: undisclosed-recipients:;\r\n"
           "Subject: Hello\r\n world\r\n"
           "X-Tag: first\r\nX-Tag: second\r\n"
           "Message-ID: <m1@example.org>\r\n")
MESSAGE = (HEADERS + "\r\nThe body.\r\n").encode()
ENVELOPE = Envelope("ann@example.org", "bob+lists@example.net")


def with_headers(*lines: str, body: str = "body\r\n") -> bytes:
    return ("".join(f"{line}\r\n" for line in lines) + "\r\n" + body).encode()


def run(script: str, message: bytes = MESSAGE, envelope: Envelope = ENVELOPE, **kwargs: int) -> Outcome:
    return evaluate(compile_script(script), message, envelope, mailbox="bob@example.net", **kwargs)


def holds(test: str, message: bytes = MESSAGE, envelope: Envelope = ENVELOPE, requires: str = ALL) -> bool:
    """Whether ``test`` is true for the message: the script files into "yes" when it is."""
    outcome = run(f'{requires}if {test} {{ fileinto "yes"; }}', message, envelope)
    return FileInto("yes") in outcome.actions


def compile_error(script: str) -> SieveError:
    with pytest.raises(SieveError) as raised:
        compile_script(script)
    return raised.value


# -- compiling -----------------------------------------------------------------------------------------


def test_empty_script_does_the_implicit_keep() -> None:
    assert run("") == Outcome((Keep(),))


def test_comments_only_script_does_the_implicit_keep() -> None:
    assert run("# nothing\n/* at\nall */\n") == Outcome((Keep(),))


def test_syntax_error_names_its_line() -> None:
    error = compile_error('require "fileinto";\nif true {\n  fileinto "a"\n}\n')
    assert error.line == 4 and "unexpected" in error.message
    assert str(error) == f"line 4: {error.message}"


@pytest.mark.parametrize(("script", "line"), [("stop", 1), ("keep;\ndiscard", 2), ("if true { keep; }\nelse", 2)])
def test_a_last_command_without_its_semicolon_or_block_is_a_syntax_error(script: str, line: int) -> None:
    error = compile_error(script)  # sievelib alone would drop the command without a word
    assert error.line == line and "end of script" in error.message


def test_unclosed_block_is_a_syntax_error() -> None:
    assert "end of script" in compile_error("if true {\n keep;\n").message


def test_unknown_command_is_a_compile_error_with_its_line() -> None:
    error = compile_error("keep;\n\nfrobnicate;\n")
    assert (error.line, error.message) == (3, "unknown command 'frobnicate'")


@pytest.mark.parametrize("extension", ["variables", "body", "regex", "relational", "date", "mailbox", "x-nonsense"])
def test_require_of_an_unsupported_extension_is_a_compile_error_naming_it(extension: str) -> None:
    error = compile_error(f'# filters\nrequire ["fileinto",\n  "{extension}"];\nkeep;\n')
    assert error.line == 2
    assert error.message == f'unsupported extension "{extension}" in require'


@pytest.mark.parametrize("extension", sorted(SUPPORTED))
def test_every_supported_extension_can_be_required(extension: str) -> None:
    assert extension in compile_script(f'require "{extension}";').extensions


def test_require_after_another_command_is_a_compile_error() -> None:
    error = compile_error('keep;\nrequire "fileinto";\n')
    assert error.line == 2 and "RFC 5228 §3.2" in error.message


def test_require_inside_a_block_is_a_compile_error() -> None:
    assert compile_error('if true {\n  require "fileinto";\n}\n').line == 2


@pytest.mark.parametrize("script", [
    'fileinto "a";', 'if envelope "from" "a" { keep; }', 'reject "no";', 'ereject "no";', 'vacation "away";',
    'require "fileinto"; fileinto :copy "a";', 'keep :flags "\\\\Seen";', 'setflag "a";',
    'if address :user "from" "a" { keep; }',
    'require "vacation"; vacation :seconds 60 "away";',
])
def test_an_extension_used_without_its_require_is_a_compile_error(script: str) -> None:
    assert "not loaded" in compile_error(script).message


def test_sieve_error_is_a_msgspool_error() -> None:
    assert isinstance(compile_error("stop;\nstop"), MsgspoolError)


def test_a_second_match_type_is_a_compile_error() -> None:
    assert "match-type" in compile_error('if header :is :contains "a" "b" { keep; }').message


def test_imap4flags_with_a_variable_name_is_refused_without_variables() -> None:
    error = compile_error('require "imap4flags";\n\naddflag "MyFlags" "\\\\Seen";\n')
    assert error.line == 3 and "variables" in error.message


def test_hasflag_with_a_variable_list_is_refused_without_variables() -> None:
    error = compile_error('require "imap4flags";\nif hasflag "MyFlags" "\\\\Seen" { keep; }\n')
    assert error.line == 2 and "variables" in error.message


def test_an_unknown_envelope_part_is_a_compile_error() -> None:
    error = compile_error('require "envelope";\n\nif envelope "auth" "x" { keep; }\n')
    assert error.line == 3 and '"auth"' in error.message


def test_vacation_days_and_seconds_together_are_a_compile_error() -> None:
    error = compile_error('require ["vacation", "vacation-seconds"];\nvacation :days 1 :seconds 5 "away";\n')
    assert error.line == 2 and "not both" in error.message


def test_vacation_from_must_be_an_address() -> None:
    assert ":from" in compile_error('require "vacation";\nvacation :from "nobody" "away";\n').message


def test_line_numbers_count_multiline_strings_and_comments() -> None:
    script = ('require ["vacation", "imap4flags"];\nvacation text:\nline one\nline two\n.\n;\n'
              '/* a\ncomment */\nif true { setflag "x" "y"; }\n')
    assert compile_error(script).line == 9


# -- strings and numbers ---------------------------------------------------------------------------


def test_quoted_string_escapes_are_undone() -> None:
    outcome = run(ALL + 'fileinto "a\\"b\\\\c\\d";')
    assert outcome.actions == (FileInto('a"b\\cd'),)


def test_multiline_string_drops_the_text_line_and_undoes_dot_stuffing() -> None:
    script = ALL + 'reject text: # why\r\nNo thanks.\r\n..signed\r\n.\r\n;\r\n'
    assert run(script).reject == Reject("No thanks.\n.signed\n")


@pytest.mark.parametrize(("limit", "over"), [("1K", True), ("2K", False), ("1M", False), ("1023", True)])
def test_size_limits_take_k_m_g_suffixes(limit: str, over: bool) -> None:
    message = with_headers("Subject: big", body="x" * 1500)
    assert holds(f"size :over {limit}", message) is over


def test_encoded_character_decodes_hex_and_unicode() -> None:
    script = 'require ["fileinto", "encoded-character"];\nfileinto "${hex: 47 72 C3 BC}${unicode:00DF 65}";'
    assert run(script).actions == (FileInto("Grüße"),)


def test_encoded_character_is_literal_without_its_require() -> None:
    assert run('require "fileinto"; fileinto "${hex:41}";').actions == (FileInto("${hex:41}"),)


def test_encoded_character_with_a_surrogate_is_a_compile_error() -> None:
    error = compile_error('require ["fileinto", "encoded-character"];\n\nfileinto "${unicode:D800}";')
    assert error.line == 3 and "encoded-character" in error.message


# -- control -------------------------------------------------------------------------------------------

CHAIN = ALL + """
if header :contains "subject" "alpha" { fileinto "a"; }
elsif header :contains "subject" "beta" { fileinto "b"; }
elsif header :contains "subject" "alpha" { fileinto "never"; }
else { fileinto "other"; }
"""


@pytest.mark.parametrize(("subject", "folder"), [("alpha beta", "a"), ("beta", "b"), ("gamma", "other")])
def test_if_elsif_else_runs_only_the_first_arm_whose_test_holds(subject: str, folder: str) -> None:
    assert run(CHAIN, with_headers(f"Subject: {subject}")).actions == (FileInto(folder),)


def test_stop_ends_the_script_with_the_implicit_keep_when_nothing_else_ran() -> None:
    assert run(ALL + 'stop;\nfileinto "never";').actions == (Keep(),)


def test_stop_after_fileinto_files_only() -> None:
    assert run(ALL + 'fileinto "a"; stop; fileinto "never";').actions == (FileInto("a"),)


def test_stop_inside_a_nested_block_ends_the_whole_script() -> None:
    script = ALL + 'if true { if true { fileinto "a"; stop; } fileinto "never"; }\nfileinto "never";'
    assert run(script).actions == (FileInto("a"),)


def test_else_belongs_to_the_nearest_if() -> None:
    script = ALL + 'if false { fileinto "x"; }\nif false { fileinto "y"; } else { fileinto "z"; }'
    assert run(script).actions == (FileInto("z"),)


# -- tests: true, false, not, allof, anyof, exists, size ---------------------------------------------


@pytest.mark.parametrize(("test", "expected"), [
    ("true", True), ("false", False), ("not true", False), ("not not true", True),
    ("allof (true, true)", True), ("allof (true, false)", False),
    ("anyof (false, true)", True), ("anyof (false, false)", False),
    ("not anyof (false, allof (true, false))", True),
])
def test_logic_tests_combine_as_written(test: str, expected: bool) -> None:
    assert holds(test) is expected


@pytest.mark.parametrize(("names", "expected"), [
    ('"subject"', True), ('["From", "x-tag"]', True), ('["from", "x-missing"]', False), ('"X-Missing"', False),
])
def test_exists_holds_when_every_named_field_is_present(names: str, expected: bool) -> None:
    assert holds(f"exists {names}") is expected


def test_size_over_and_under_are_strict() -> None:
    size = len(MESSAGE)
    assert holds(f"size :over {size - 1}") and not holds(f"size :over {size}")
    assert holds(f"size :under {size + 1}") and not holds(f"size :under {size}")


def test_size_counts_the_message_with_crlf_line_ends() -> None:
    lf_only = MESSAGE.replace(b"\r\n", b"\n")
    assert holds(f"size :under {len(MESSAGE) + 1}", lf_only) and not holds(f"size :under {len(MESSAGE)}", lf_only)


# -- tests: header, match types, comparators ----------------------------------------------------------


@pytest.mark.parametrize(("test", "expected"), [
    ('header :is "subject" "hello world"', True),  # unfolded, ASCII case ignored (i;ascii-casemap)
    ('header :is "Subject" "Hello"', False),
    ('header :contains "subject" "LO WO"', True),
    ('header :contains "subject" ""', True),
    ('header :is :comparator "i;octet" "subject" "hello world"', False),
    ('header :is :comparator "i;octet" "subject" "Hello world"', True),
    ('header :contains :comparator "i;ascii-casemap" "subject" "WORLD"', True),
    ('header :is "x-tag" "second"', True),  # any occurrence of the field
    ('header :is ["to", "x-tag"] ["nope", "first"]', True),  # any name, any key
    ('header :contains "x-missing" ""', False),  # an absent field matches nothing
])
def test_header_compares_every_value_of_every_named_field(test: str, expected: bool) -> None:
    assert holds(test) is expected


@pytest.mark.parametrize(("key", "expected"), [
    ("*", True), ("Hello*", True), ("*world", True), ("H?llo w*d", True), ("h*o*o*d", True),
    ("Hello", False), ("?ello", False), ("Hello world?", False), ("*x*", False), ("hello ?????", True),
])
def test_matches_takes_star_and_question_mark_as_wildcards(key: str, expected: bool) -> None:
    assert holds(f'header :matches "subject" "{key}"') is expected


@pytest.mark.parametrize(("subject", "key", "expected"), [
    ("a*b", "a\\\\*b", True), ("axb", "a\\\\*b", False),
    ("a?b", "a\\\\?b", True), ("axb", "a\\\\?b", False),
    ("a\\b", "a\\\\\\\\b", True),
])
def test_matches_takes_a_backslash_escaped_wildcard_literally(subject: str, key: str, expected: bool) -> None:
    assert holds(f'header :matches "subject" "{key}"', with_headers(f"Subject: {subject}")) is expected


def test_question_mark_matches_one_character_not_one_octet() -> None:
    assert holds('header :matches "subject" "gr??e"', with_headers("Subject: grüße"))


def test_matches_with_many_stars_stays_fast_on_a_long_value() -> None:
    assert not wildcard_match(("a", None) * 30 + ("b",), "a" * 20000)
    assert wildcard_match((None, "a", None, "b", None), "x" * 5000 + "ab")


def test_header_decodes_rfc2047_encoded_words() -> None:
    message = with_headers("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus =?iso-8859-1?b?S/Zsbg==?=")
    assert holds('header :is "subject" "Grüße aus Köln"', message)


def test_header_reads_raw_utf8_fields() -> None:
    assert holds('header :contains "subject" "Köln"', with_headers("Subject: Grüße aus Köln"))


def test_ascii_casemap_folds_only_ascii_letters() -> None:
    message = with_headers("Subject: ÄRGER")
    assert not holds('header :is "subject" "ärger"', message)
    assert holds('header :is "subject" "Ärger"', message)


def test_header_names_are_case_insensitive() -> None:
    assert holds('header :is "SUBJECT" "hello world"')


# -- tests: address, envelope, subaddress ----------------------------------------------------------


@pytest.mark.parametrize(("test", "expected"), [
    ('address :is "from" "ann@example.org"', True),  # :all is the default; ASCII case ignored
    ('address :all :is "from" "Ann@Example.ORG"', True),
    ('address :localpart :is "from" "ann"', True),
    ('address :domain :is "from" "example.org"', True),
    ('address :domain :is :comparator "i;octet" "from" "example.org"', False),
    ('address :is "from" "Ann Example"', False),  # display names are not compared
    ('address :contains "from" "Example <"', False),
    ('address :domain :is "to" "example.com"', True),  # any address of the field
    ('address :matches "to" "bob+*@*"', True),
    ('address :is ["cc", "from"] "ann@example.org"', True),  # a group is no address
    ('address :localpart :is "cc" ""', False),
])
def test_address_compares_the_chosen_part_of_each_address(test: str, expected: bool) -> None:
    assert holds(test) is expected


@pytest.mark.parametrize(("test", "expected"), [
    ('address :user "to" "bob"', True),
    ('address :detail "to" "lists"', True),
    ('address :user "from" "ann"', True),
    ('address :detail "from" "*"', False),  # no "+": no detail at all, not even an empty one
    ('envelope :detail "to" "lists"', True),
])
def test_subaddress_splits_the_local_part_at_plus(test: str, expected: bool) -> None:
    assert holds(test) is expected


def test_subaddress_empty_detail_matches_the_empty_string() -> None:
    assert holds('address :detail :is "to" ""', with_headers("To: bob+@example.net"))


@pytest.mark.parametrize(("test", "expected"), [
    ('envelope :is "from" "ann@example.org"', True),
    ('envelope :domain :is "to" "EXAMPLE.net"', True),
    ('envelope :localpart :is "to" "bob+lists"', True),
    ('envelope :is ["from", "to"] "bob+lists@example.net"', True),
    ('envelope :is "From" "ann@example.org"', True),
    ('envelope :is "to" "ann@example.org"', False),
])
def test_envelope_compares_the_smtp_sender_and_recipient(test: str, expected: bool) -> None:
    assert holds(test) is expected


@pytest.mark.parametrize("part", [":all", ":localpart", ":domain"])
def test_envelope_null_sender_is_the_empty_string_for_every_part(part: str) -> None:
    bounce = Envelope("", "bob@example.net")
    assert holds(f'envelope {part} :is "from" ""', envelope=bounce)
    assert not holds(f'envelope {part} :matches "from" "?*"', envelope=bounce)


# -- actions, implicit keep, duplicates ----------------------------------------------------------------


def test_fileinto_cancels_the_implicit_keep() -> None:
    assert run(ALL + 'fileinto "Lists";').actions == (FileInto("Lists"),)


def test_fileinto_copy_keeps_the_implicit_keep() -> None:
    assert run(ALL + 'fileinto :copy "Archive";').actions == (FileInto("Archive", copy=True), Keep())


def test_fileinto_the_same_folder_twice_files_once() -> None:
    assert run(ALL + 'fileinto "a"; fileinto "b"; fileinto "a";').actions == (FileInto("a"), FileInto("b"))


def test_fileinto_inbox_is_a_keep() -> None:
    assert run(ALL + 'fileinto "inbox"; keep;').actions == (Keep(),)


def test_explicit_keep_is_one_store_with_the_implicit_keep() -> None:
    assert run("keep; keep;").actions == (Keep(),)


def test_discard_alone_stores_nothing() -> None:
    outcome = run("discard;")
    assert outcome.actions == (Discard(),) and outcome.stores == ()


def test_discard_does_not_undo_an_explicit_keep_or_fileinto() -> None:
    assert run(ALL + 'keep; fileinto "a"; discard;').actions == (Keep(), FileInto("a"), Discard())


def test_redirect_cancels_the_implicit_keep() -> None:
    assert run('redirect "carol@example.com";').actions == (Redirect("carol@example.com"),)


def test_redirect_copy_keeps_the_implicit_keep() -> None:
    outcome = run(ALL + 'redirect :copy "carol@example.com";')
    assert outcome.actions == (Redirect("carol@example.com", copy=True), Keep())
    assert outcome.redirects == (Redirect("carol@example.com", copy=True),)


def test_redirect_to_the_same_address_twice_sends_once() -> None:
    outcome = run('redirect "carol@example.com"; redirect "Carol@EXAMPLE.com";')
    assert outcome.actions == (Redirect("carol@example.com"),)


def test_redirect_to_an_invalid_address_is_a_runtime_error_that_keeps() -> None:
    outcome = run(ALL + 'fileinto "a";\nredirect "not an address";')
    assert outcome.actions == (Keep(),)
    assert outcome.error is not None and "not an address" in outcome.error


def test_more_redirects_than_the_limit_is_a_runtime_error() -> None:
    script = "".join(f'redirect "u{i}@example.com";' for i in range(3))
    assert run(script, max_redirects=3).error is None
    assert run(script, max_redirects=2) == Outcome((Keep(),), error="more than 2 redirects")


def test_reject_cancels_the_implicit_keep() -> None:
    outcome = run(ALL + 'reject "Not here.";')
    assert outcome.actions == (Reject("Not here."),) and outcome.reject == Reject("Not here.")


def test_ereject_is_an_extended_reject() -> None:
    assert run(ALL + 'ereject "Go away.";').reject == Reject("Go away.", extended=True)


def test_reject_with_discard_is_allowed() -> None:
    assert run(ALL + 'discard; reject "no";').actions == (Discard(), Reject("no"))


@pytest.mark.parametrize("other", [
    'fileinto "a";', "keep;", 'redirect "carol@example.com";', 'redirect :copy "carol@example.com";',
    'vacation "away";', 'reject "again";', 'ereject "again";', 'fileinto :copy "a";',
])
@pytest.mark.parametrize("reject_first", [True, False])
def test_reject_with_a_delivery_a_vacation_or_another_reject_is_a_runtime_error(other: str,
                                                                                  reject_first: bool) -> None:
    script = ALL + ('reject "no";' + other if reject_first else other + 'reject "no";')
    outcome = run(script)
    assert outcome.actions == (Keep(),)
    assert outcome.error is not None and "reject" in outcome.error


def test_reject_reply_is_550_5_7_1_with_the_reason() -> None:
    reply = reject_reply(Reject("Your message is not wanted."))
    assert reply.line() == "550 5.7.1 Your message is not wanted."


def test_reject_reply_keeps_the_lines_of_the_reason_in_printable_ascii() -> None:
    reply = reject_reply(Reject("Nicht erwünscht.\n\nBye.\n"))
    assert reply.wire() == b"550-5.7.1 Nicht erw?nscht.\r\n550 5.7.1 Bye.\r\n"


def test_reject_reply_without_a_reason_still_says_why() -> None:
    assert reject_reply(Reject("")).text == "message rejected by the recipient's filter"


# -- imap4flags ------------------------------------------------------------------------------------------


def test_setflag_flags_the_implicit_keep() -> None:
    assert run(ALL + 'setflag "\\\\Seen";').actions == (Keep(("\\Seen",)),)


def test_addflag_adds_each_flag_once_ignoring_case() -> None:
    script = ALL + 'addflag "\\\\Seen"; addflag ["\\\\seen \\\\Flagged", "$Work"];'
    assert run(script).actions == (Keep(("\\Seen", "\\Flagged", "$Work")),)


def test_removeflag_removes_ignoring_case_and_setflag_replaces() -> None:
    assert run(ALL + 'setflag "a b c"; removeflag ["B"];').actions == (Keep(("a", "c")),)
    assert run(ALL + 'setflag "a b"; setflag "c";').actions == (Keep(("c",)),)


def test_keep_and_fileinto_flags_argument_overrides_the_variable() -> None:
    script = ALL + 'setflag "x"; fileinto :flags "\\\\Seen" "a"; keep :flags ["y", "z"];'
    assert run(script).actions == (FileInto("a", ("\\Seen",)), Keep(("y", "z")))


def test_fileinto_takes_the_flags_of_its_moment() -> None:
    script = ALL + 'addflag "one"; fileinto "a"; addflag "two"; fileinto :copy "b";'
    assert run(script).actions == (FileInto("a", ("one",)), FileInto("b", ("one", "two"), copy=True))


def test_filing_one_folder_twice_joins_the_flags() -> None:
    script = ALL + 'fileinto :flags "x" "a"; fileinto :flags "y" "a";'
    assert run(script).actions == (FileInto("a", ("x", "y")),)


@pytest.mark.parametrize(("test", "expected"), [
    ('hasflag "\\\\seen"', True), ('hasflag ["nope", "$Work"]', True), ('hasflag "nope"', False),
    ('hasflag :contains "work"', True), (r'hasflag :matches "\\\\*"', True), ('hasflag :matches "\\\\*"', False),
    ('hasflag :matches "*x*"', False),
    ('hasflag :is :comparator "i;octet" "$work"', False), ('hasflag "nope $work"', True),
])
def test_hasflag_matches_the_flags_of_the_internal_variable(test: str, expected: bool) -> None:
    script = ALL + f'setflag "\\\\Seen $Work";\nif {test} {{ fileinto "yes"; }}'
    assert (FileInto("yes", ("\\Seen", "$Work")) in run(script).actions) is expected


def test_a_runtime_error_keeps_without_the_script_flags() -> None:
    assert run(ALL + 'setflag "x"; redirect "bad";').actions == (Keep(),)


# -- the vacation action -----------------------------------------------------------------------------------


def vacation_of(arguments: str, envelope: Envelope = ENVELOPE) -> Vacation:
    script = 'require ["vacation", "vacation-seconds"];\n' + f"vacation {arguments};"
    found = run(script, envelope=envelope).vacation
    assert found is not None
    return found


def test_vacation_carries_its_arguments_and_keeps_the_message() -> None:
    outcome = run('require "vacation";\nvacation :days 3 :subject "Away" :from "Bob <bob@example.net>"\n'
                  ' :addresses ["bob@example.com", "robert@example.net"] :handle "h1" "Back on Monday.";')
    assert outcome.actions == (
        Vacation("ann@example.org", "bob+lists@example.net", "bob@example.net", "Back on Monday.", 3 * DAY, "h1",
                 "Away", "Bob <bob@example.net>", ("bob@example.com", "robert@example.net")),
        Keep(),
    )


def test_vacation_days_default_to_seven_and_are_at_least_one() -> None:
    assert vacation_of('"away"').seconds == 7 * DAY
    assert vacation_of(':days 0 "away"').seconds == DAY


def test_vacation_seconds_give_the_period_in_seconds() -> None:
    assert vacation_of(':seconds 90 "away"').seconds == 90
    assert vacation_of(':seconds 0 "away"').seconds == 0


def test_vacation_mime_reason_is_flagged() -> None:
    assert vacation_of(':mime text:\nContent-Type: text/plain\n\nAway.\n.\n').mime


def test_vacation_handle_is_derived_from_reason_subject_from_and_mime() -> None:
    same = vacation_of(':subject "s" "away"').handle
    assert vacation_of(':subject "s" "away"').handle == same
    assert len({same, vacation_of('"away"').handle, vacation_of(':subject "s" "back"').handle,
                vacation_of(':subject "s" :from "x@example.net" "away"').handle,
                vacation_of(':subject "s" :mime "away"').handle}) == 5


def test_vacation_key_is_the_sender_and_the_handle() -> None:
    vacation = vacation_of(':handle "trip" "away"', Envelope("Ann@Example.ORG", "bob@example.net"))
    assert vacation.key == ("ann@example.org", "trip")


def test_a_second_vacation_in_one_run_is_ignored() -> None:
    outcome = run('require "vacation"; vacation :handle "one" "first"; vacation :handle "two" "second";')
    assert outcome.vacation is not None and outcome.vacation.handle == "one"
    assert sum(isinstance(a, Vacation) for a in outcome.actions) == 1


# -- a whole script ----------------------------------------------------------------------------------------

FILTER = ALL + """
# a mailbox's filter, as a user writes it
if address :domain :is "from" "spam.example" {
    reject text:
Your mail is not welcome here.
.
;
    stop;
}
if header :contains "list-id" "<dev.lists.example.org>" {
    fileinto :flags "\\\\Seen" "Lists/dev";
    stop;
}
vacation :days 7 :addresses "bob@example.net" "I am away until Monday.";
"""


def test_a_filter_files_list_mail_rejects_spam_and_answers_the_rest() -> None:
    listed = with_headers("From: dev@lists.example.org", "List-Id: Dev <dev.lists.example.org>", "To: dev@example.org")
    spam = with_headers("From: Deals <deals@spam.example>", "To: bob@example.net")
    personal = with_headers("From: ann@example.org", "To: bob@example.net")
    assert run(FILTER, listed).actions == (FileInto("Lists/dev", ("\\Seen",)),)
    assert run(FILTER, spam).actions == (Reject("Your mail is not welcome here.\n"),)
    outcome = run(FILTER, personal)
    assert outcome.vacation is not None and outcome.stores == (Keep(),)


def test_fileinto_an_empty_folder_name_is_a_runtime_error() -> None:
    assert run(ALL + 'fileinto "";') == Outcome((Keep(),), error="fileinto: empty folder name")


def test_header_fields_read_obsolete_space_before_the_colon_and_skip_an_mbox_from_line() -> None:
    message = b"From ann@example.org Mon Jan  1 12:00:00 2024\r\nSubject : spaced\r\n\r\nbody\r\n"
    assert holds('header :is "subject" "spaced"', message)
    assert not holds('exists "from ann@example.org mon jan  1 12"', message)


def test_line_numbers_reach_tests_nested_in_anyof_and_not() -> None:
    script = ('require "envelope";\nif anyof (true,\n  not header :is "a" "b",\n'
              '  allof (false,\n    envelope :is "auth" "x")) { keep; }\n')
    assert compile_error(script).line == 5
