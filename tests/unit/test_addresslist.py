"""Address lists as written (domain/addresslist.py, RFC 5322 §3.4): where each addr-spec sits, and
mapping addresses without touching anything else."""

from __future__ import annotations

import pytest

from msgspool.domain.addresslist import AddressListError, addr_specs, map_addresses, tokenize


def found(value: str) -> list[tuple[str, str]]:
    """Each addr-spec's address, and the text it covers in the value."""
    return [(s.address, value[s.start:s.end]) for s in addr_specs(value)]


def test_tokens_cover_the_value_end_to_end() -> None:
    value = 'x (a (nested) \\) comment) "q\\"s" [1.2.3.4] =?utf-8?q?a?=,\r\n\t<a@b>'
    tokens = tokenize(value)
    assert "".join(value[t.start:t.end] for t in tokens) == value
    assert [t.kind for t in tokens if t.kind != "space"] == [
        "atom", "comment", "quoted", "literal", "atom", ",", "<", "atom", "@", "atom", ">"]


def test_an_encoded_word_is_one_atom_so_its_encoded_comma_splits_nothing() -> None:
    assert found("=?us-ascii?q?Doe=2C_John?= <a@x.example>") == [("a@x.example", "a@x.example")]


def test_quoted_names_comments_and_empty_entries_are_not_addresses() -> None:
    value = '"Doe, J" <a@x.example> (b@not.example), , c@y.example,'
    assert found(value) == [("a@x.example", "a@x.example"), ("c@y.example", "c@y.example")]


def test_group_members_are_found_and_an_empty_group_has_none() -> None:
    assert found("Team: a@x.example, B <b@x.example>;, none:;") == [("a@x.example", "a@x.example"),
                                                                    ("b@x.example", "b@x.example")]


def test_an_address_written_with_cfws_is_named_without_it() -> None:
    assert found("a . b @ x .example") == [("a.b@x.example", "a . b @ x .example")]


def test_route_literal_and_quoted_local_parts_are_addresses() -> None:
    assert [a for a, _ in found('<@r.example:a@x.example>, b@[192.0.2.1], "j d"@x.example')] == [
        "a@x.example", "b@[192.0.2.1]", '"j d"@x.example']


@pytest.mark.parametrize("value", [
    "Müller, Hans <a@x.example>",  # an unquoted comma in a display name
    "John Doe@x.example", "a@x.example Bob", "Bob <a@x.example", '"Bob <a@x.example>', "(open a@x.example",
    "just-a-name", "A: B: c@x.example;;", "a@"])
def test_what_is_not_an_address_list_raises(value: str) -> None:
    with pytest.raises(AddressListError):
        addr_specs(value)


def test_map_addresses_changes_only_mapped_addresses() -> None:
    value = " Team: a@old.example (me),\r\n =?utf-8?q?B=2C_C?= <b@old.example>;, c@keep.example\r\n"
    mapped = map_addresses(value, lambda a: a.replace("old.", "new."))
    assert mapped == " Team: a@new.example (me),\r\n =?utf-8?q?B=2C_C?= <b@new.example>;, c@keep.example\r\n"
