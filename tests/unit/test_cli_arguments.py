"""The shell refuses, before it opens the database, an id or a count that can name no row: the
number past 2^63 - 1 was an OverflowError on SQLite, a count of 0 or less an empty or whole table."""
import pytest

from gateway.cli import main


@pytest.mark.parametrize("argv, told", [
    (["messages", "show", str(2**63)], f"{2**63} is not from 1 to {2**63 - 1}"),
    (["messages", "show", "x"], "'x' is not a number"),
    (["messages", "reprocess", "0"], "0 is not from 1 to"),
    (["messages", "list", "--limit", "-1"], "-1 is not from 1 to 100000"),
])
def test_an_id_or_a_count_that_names_no_row_is_refused_with_its_range(argv, told, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert told in capsys.readouterr().err
