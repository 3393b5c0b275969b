"""FHIRPath Patch (FHIR R4, fhirpatch.html): a Parameters resource whose `operation` parameters
add, insert, delete, replace or move the elements a FHIRPath names. PDSm's document sharing manager
takes it for a PATCH beside JSON Patch (its OpenAPI: a Parameters body in FHIR JSON or XML), and
HAPI's and Firely's clients send it.

A FHIRPath engine gives values, where a patch needs the places they are at: a path is walked here,
on the syntax tree of fhirpathpy's grammar, through what a patch names an element by: names (a
choice by its name, `value` for valueBoolean), an index (`[0]`), first(), last(), single(),
extension(url) and where(criteria). The criteria are FHIRPath that fhirpathpy evaluates on each
element, with the functions that stay bounded there: no %variable, resolve(), descendants(),
repeat(), aggregate() nor regular expression, whose work a client could make unbounded.
"""
from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable

from antlr4 import CommonTokenStream, InputStream, ParseTreeWalker
from antlr4.error.ErrorListener import ErrorListener
from antlr4.error.ErrorStrategy import BailErrorStrategy
from antlr4.error.Errors import ParseCancellationException
from fhir.resources.R4B import get_fhir_model_class
from fhirpathpy import apply_parsed_path
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from gateway.refusal import Refused

# What each type of operation is given beside its type and path (R4 fhirpatch.html, its table).
PARTS = {"add": ("name", "value"), "insert": ("value", "index"), "delete": (), "replace": ("value",),
         "move": ("source", "destination")}
INTEGER_PARTS = ("index", "source", "destination")
# A patch makes one change here (gateway/services/labels.py); a few operations may make it. The
# grammar's parser takes some 80 ms for a path of 300 characters, more than twice as long per
# character beyond (0.3 s for 500, 1 s for 1,000): the paths a patch needs are shorter.
MAX_OPERATIONS = 8
MAX_PATH = 300
CRITERIA_FUNCTIONS = frozenset({
    "where", "exists", "empty", "not", "all", "first", "last", "single", "count", "hasValue", "startsWith",
    "endsWith", "contains", "lower", "upper", "length", "ofType", "is", "as", "extension", "allTrue", "anyTrue",
    "allFalse", "anyFalse", "distinct", "isDistinct", "toString", "toInteger", "toBoolean"})
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class Operation:
    type: str
    path: dict            # its syntax tree
    text: str             # the path as sent
    where: str            # the operation's place in the Parameters
    name: str | None = None
    value: object = None
    value_key: str | None = None   # the value part's value[x], when it gives one
    index: int | None = None
    source: int | None = None
    destination: int | None = None


def operations(parameters: dict) -> list[Operation]:
    """The operations of a FHIRPath Patch, in their order; a 400 that names what is not one."""
    if parameters.get("resourceType") != "Parameters":
        raise _malformed(f"a FHIRPath Patch is a Parameters resource, not a {parameters.get('resourceType')}; "
                         "a JSON Patch is sent as application/json-patch+json", "resourceType")
    given = parameters.get("parameter") or []   # none: nothing changes, as HL7's test cases have it
    if len(given) > MAX_OPERATIONS:
        raise Refused(f"a patch here makes one change, in at most {MAX_OPERATIONS} operations", location="Parameters",
                      status=413, code="too-costly")
    return [_operation(parameter, f"Parameters.parameter[{i}]") for i, parameter in enumerate(given)]


def patch(parameters: dict) -> Callable[[dict], dict]:
    """The patch a Parameters resource asks (services.labels.Patch), its operations read once."""
    return partial(apply, asked=operations(parameters))


def apply(resource: dict, asked: list[Operation]) -> dict:
    """The resource the operations asked make of `resource` (not changed); a 422 at the operation
    that cannot be applied."""
    result = copy.deepcopy(resource)
    for operation in asked:
        _apply(result, operation)
    return result


def _malformed(reason: str, location: str) -> Refused:
    return Refused(reason, location=location, status=400, code="invalid")


def _unapplied(operation: Operation, reason: str) -> Refused:
    return Refused(f"the {operation.type} of {operation.text!r} cannot be applied: {reason}", location=operation.where,
                   status=422, code="processing")


def _operation(parameter: dict, where: str) -> Operation:
    if parameter.get("name") != "operation":
        raise _malformed(f"a FHIRPath Patch's parameters are each an operation, not {parameter.get('name')!r}",
                         f"{where}.name")
    parts: dict[str, tuple[dict, str]] = {}
    for i, part in enumerate(parameter.get("part") or []):
        name = part.get("name")
        if name in parts:
            raise _malformed(f"the part {name} is given twice", f"{where}.part[{i}]")
        parts[name] = part, f"{where}.part[{i}]"
    kind = _primitive(parts, "type", ("valueCode", "valueString"), where)
    if kind not in PARTS:
        raise _malformed(f"an operation's type is one of {', '.join(PARTS)}, not {kind!r}", parts["type"][1])
    wanted = {"type", "path", *PARTS[kind]}
    if unknown := sorted(set(parts) - wanted, key=str):
        raise _malformed(f"{kind} takes the parts {', '.join(sorted(wanted))}, not {unknown[0]}", parts[unknown[0]][1])
    if missing := [name for name in PARTS[kind] if name not in parts]:
        raise _malformed(f"the operation has no {missing[0]} part", where)
    text = _primitive(parts, "path", ("valueString",), where)
    fields = {name: _primitive(parts, name, ("valueInteger",), where) for name in INTEGER_PARTS if name in parts}
    name = _primitive(parts, "name", ("valueString",), where) if "name" in parts else None
    if name is not None and not NAME.fullmatch(name):
        raise _malformed(f"{name!r} is not an element's name", parts["name"][1])
    path = _parse(text, parts["path"][1])
    value = _value(*parts["value"], name or _element_named(path)) if "value" in parts else None
    value_key = next((key for key in parts["value"][0] if key.startswith("value")), None) if "value" in parts else None
    return Operation(kind, path, text, where, name, value, value_key, **fields)


def _primitive(parts: dict, name: str, types: tuple[str, ...], where: str):
    if name not in parts:
        raise _malformed(f"the operation has no {name} part", where)
    part, place = parts[name]
    for key in types:
        if key in part:
            return part[key]
    raise _malformed(f"the {name} part gives its value as {' or '.join(types)}", place)




def _value(part: dict, where: str, element: str) -> object:
    """A part's value: its value[x], or the element its parts make (an extension's, a backbone
    element's, which Parameters cannot give as a value[x])."""
    given = [key for key in part if key.startswith("value")]
    if given and "part" in part:
        raise _malformed("a value is given as a value[x] or as parts, not both", where)
    if given:
        return part[given[0]]
    if not part.get("part"):
        raise _malformed("the value part gives a value[x] or parts", where)
    made: dict = {}
    for i, sub in enumerate(part["part"]):
        name, place = sub.get("name"), f"{where}.part[{i}]"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise _malformed(f"{name!r} is not an element's name", place)
        typed = [key for key in sub if key.startswith("value")]
        # An extension's value[x] is named `value`, its type by the part's value[x].
        key = typed[0] if name == "value" and element in ("extension", "modifierExtension") and typed else name
        value = _value(sub, place, name)
        if key not in made:
            made[key] = value
        else:   # a part given again: the element repeats (_shaped makes a list of one given once)
            made[key] = [*made[key], value] if isinstance(made[key], list) else [made[key], value]
    return made


def _shaped(value, model: type | None):
    """A value as FHIR's JSON writes it for an element of `model`: the members that repeat as lists,
    though given by one part."""
    if model is None or not isinstance(value, dict):
        return value
    shaped = {}
    for key, item in value.items():
        listed, model_of_item = _member(model, key) or (False, None)
        if listed and not isinstance(item, list):
            item = [item]
        shaped[key] = [_shaped(i, model_of_item) for i in item] if isinstance(item, list) else _shaped(
            item, model_of_item)
    return shaped


# Narrative.div has the name of FHIRPath's `div` operator, which the grammar does not take as a
# member's name unless delimited (`div`): HL7's test cases write Patient.text.div, as clients do.
DIV_MEMBER = re.compile(r"('(?:[^'\\]|\\.)*')|\.div\b")


class _Raise(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
        raise ParseCancellationException(f"at character {column + 1}: {msg}")


def _parse(text: str, where: str) -> dict:
    """The syntax tree of a path, the whole of it FHIRPath (fhirpathpy's own parse recovers from an
    error and gives a tree of what it could read)."""
    if not text or len(text) > MAX_PATH:
        raise _malformed(f"a path is a FHIRPath of 1 to {MAX_PATH} characters", where)
    lexer = FHIRPathLexer(InputStream(DIV_MEMBER.sub(lambda match: match.group(1) or ".`div`", text)))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Raise())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_Raise())
    parser._errHandler = BailErrorStrategy()
    try:
        tree = parser.entireExpression()
    except (ParseCancellationException, RecursionError) as exc:
        problem = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "it goes on after an expression"
        raise _malformed(f"the path {text!r} is not FHIRPath ({problem})", where) from None
    listener = ASTPathListener()
    ParseTreeWalker().walk(listener, tree.expression())
    return listener.parentStack[0]["children"][0]


@dataclass(frozen=True)
class _Place:
    """Where an element is: `holder[key]`, `holder` a dict or a list that is the value at `up` (None
    at the resource); of a FHIR model class when it is of a complex type."""
    holder: dict | list
    key: str | int
    model: type | None
    up: "_Place | None" = None

    def get(self):
        return self.holder[self.key]


@lru_cache(maxsize=512)   # bounded: a key may be any name a client sends
def _member(model: type, key: str) -> tuple[bool, type | None] | None:
    """Whether a member of a model class is a list, and its class when it is complex; None when
    the class has no such member."""
    field = next((f for name, f in model.model_fields.items() if (f.alias or name) == key), None)
    if field is None:
        return None
    annotation = field.annotation
    listed = False
    while typing.get_args(annotation):
        if typing.get_origin(annotation) is list:
            listed = True
        annotation = typing.get_args(annotation)[0]
    name = getattr(annotation, "__name__", "")
    if not name.endswith("Type") or name == "ResourceType":
        return listed, None
    try:
        return listed, get_fhir_model_class(name[:-len("Type")])
    except (KeyError, ValueError):
        return listed, None


def _member_key(value: dict, name: str) -> str | None:
    """The JSON member a FHIRPath name is: itself, or a choice's (`value` is valueBoolean)."""
    if name in value:
        return name
    return next((key for key in value if key.startswith(name) and key[len(name):len(name) + 1].isupper()), None)


def _children(places: list[_Place], name: str) -> list[_Place]:
    out = []
    for place in places:
        value = place.get()
        if not isinstance(value, dict) or (key := _member_key(value, name)) is None:
            continue
        if isinstance(value[key], list):
            member = _Place(value, key, None, place)
            out += [_Place(value[key], i, _class_of(place.model, key, item), member)
                    for i, item in enumerate(value[key])]
        else:
            out.append(_Place(value, key, _class_of(place.model, key, value[key]), place))
    return out


def _class_of(model: type | None, key: str, value) -> type | None:
    if isinstance(value, dict) and "resourceType" in value:   # a contained resource
        try:
            return get_fhir_model_class(str(value["resourceType"]))
        except (KeyError, ValueError):
            return None
    member = _member(model, key) if model is not None else None
    return member[1] if member else None


def _identifier(node: dict) -> str:
    text = node["terminalNodeText"][0] if node.get("terminalNodeText") else node.get("text", "")
    return text[1:-1] if text.startswith("`") else text


def _element_named(node: dict) -> str:
    """The element a path's tree ends on, the name a value's parts are members of: its last name, or
    `extension` for extension(url), through an index, first(), last(), single() and where()."""
    kind, children = node.get("type"), node.get("children", [])
    if kind == "IndexerExpression":
        return _element_named(children[0])
    if kind == "TermExpression" and children and children[0].get("type") == "InvocationTerm":
        return _invocation_named(children[0]["children"][0]) or ""
    if kind == "InvocationExpression":
        return _invocation_named(children[1]) or _element_named(children[0])
    return ""


def _invocation_named(node: dict) -> str | None:
    if node.get("type") == "MemberInvocation":
        return _identifier(node["children"][0])
    if node.get("type") == "FunctionInvocation" and _identifier(node["children"][0]["children"][0]) == "extension":
        return "extension"
    return None


def _unsupported(operation: Operation, what: str) -> Refused:
    return _unapplied(operation, f"{what} is not taken in a patch's path, which names elements, by name, index "
                                 "([n]), first(), last(), single(), extension(url) and where(criteria)")


def _evaluate(node: dict, root: _Place, operation: Operation) -> list[_Place]:
    kind, children = node.get("type"), node.get("children", [])
    if kind == "TermExpression" and children and children[0].get("type") == "InvocationTerm":
        return _invoke([root], children[0]["children"][0], operation, head=True)
    if kind == "InvocationExpression":
        return _invoke(_evaluate(children[0], root, operation), children[1], operation)
    if kind == "IndexerExpression":
        places = _evaluate(children[0], root, operation)
        literal = children[1].get("children", [{}])[0].get("children", [{}])[0]
        if literal.get("type") != "NumberLiteral" or not literal.get("text", "").isdigit():
            raise _unsupported(operation, "an index other than a whole number")
        return places[int(literal["text"]):int(literal["text"]) + 1]
    raise _unsupported(operation, f"an expression ({kind})")


def _invoke(places: list[_Place], node: dict, operation: Operation, head: bool = False) -> list[_Place]:
    kind, children = node.get("type"), node.get("children", [])
    if kind == "MemberInvocation":
        name = _identifier(children[0])
        if head and places and name == places[0].get().get("resourceType"):
            return places
        return _children(places, name)
    if kind == "FunctionInvocation":
        function = children[0]["children"]
        name = _identifier(function[0])
        arguments = function[1]["children"] if len(function) > 1 else []
        if name in ("first", "last", "single") and not arguments:
            if name == "single" and len(places) > 1:
                raise _unapplied(operation, f"single() is given {len(places)} elements")
            return places[:1] if name != "last" else places[-1:]
        if name == "where" and len(arguments) == 1:
            _check_criteria(arguments[0], operation)
            return [place for place in places if _holds(arguments[0], place.get(), operation)]
        if name == "extension" and len(arguments) == 1:
            url = _evaluate_literal(arguments[0], operation)
            return [place for place in _children(places, "extension")
                    if isinstance(place.get(), dict) and place.get().get("url") == url]
        raise _unsupported(operation, f"the function {name}()")
    raise _unsupported(operation, f"an expression ({kind})")


def _check_criteria(node: dict, operation: Operation) -> None:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.get("type") == "ExternalConstantTerm":
            raise _unsupported(operation, "a %variable")
        if current.get("type") == "Functn" and (name := _identifier(current["children"][0])) not in CRITERIA_FUNCTIONS:
            raise _unsupported(operation, f"the function {name}() in where()")
        stack += current.get("children", [])


def _holds(criteria: dict, value, operation: Operation) -> bool:
    try:
        result = apply_parsed_path(copy.deepcopy(value), {"children": [criteria]})
    except Exception as exc:   # fhirpathpy's errors have no common type
        raise _unapplied(operation, f"its where() criteria cannot be evaluated ({type(exc).__name__})") from None
    if result not in ([], [True], [False]):
        raise _unapplied(operation, "its where() criteria give no boolean")
    return result == [True]


def _evaluate_literal(node: dict, operation: Operation) -> str:
    literal = node.get("children", [{}])[0].get("children", [{}])[0]
    if node.get("type") != "TermExpression" or literal.get("type") != "StringLiteral":
        raise _unsupported(operation, "an extension() whose url is not a string")
    return apply_parsed_path({}, {"children": [node]})[0]


def _container(document: dict, operation: Operation) -> tuple[_Place, str]:
    """The one element a path's last name is a member of, and that name (insert, move)."""
    node = operation.path
    if node.get("type") != "InvocationExpression" or node["children"][1].get("type") != "MemberInvocation":
        raise _unapplied(operation, "its path does not end on an element's name")
    places = _evaluate(node["children"][0], _root(document), operation)
    return _one(places, operation), _identifier(node["children"][1]["children"][0])


def _root(document: dict) -> _Place:
    return _Place([document], 0, get_fhir_model_class(document["resourceType"]))


def _one(places: list[_Place], operation: Operation) -> _Place:
    if len(places) != 1:
        raise _unapplied(operation, f"its path names {len(places)} elements, not one")
    return places[0]


def _apply(document: dict, operation: Operation) -> None:
    if operation.type in ("insert", "move"):
        container, name = _container(document, operation)
        _listed(container, name, operation)
        return
    root = _root(document)
    places = _evaluate(operation.path, root, operation)
    if operation.type == "delete" and not places:
        return   # "the element to delete (if found)"
    place = _one(places, operation)
    if place.holder is root.holder and operation.type != "add":
        raise _unapplied(operation, "a patch changes elements of the resource, not the resource itself")
    if operation.type == "add":
        _add(place, operation)
    elif operation.type == "replace":
        place.holder[place.key] = _shaped(operation.value, place.model)
    else:   # delete
        del place.holder[place.key]
        # What the deletion left empty goes with it, as FHIR has no empty element (HL7's "Delete
        # Nested Primitive #2": a name whose text is deleted).
        emptied = place.up
        while emptied is not None and emptied.up is not None and emptied.get() in ({}, []):
            del emptied.holder[emptied.key]
            emptied = emptied.up


def _add(place: _Place, operation: Operation) -> None:
    element, name = place.get(), operation.name
    if not isinstance(element, dict):
        raise _unapplied(operation, "its path names a value, which has no elements to add to")
    key, member = name, None
    if place.model is not None:
        # A choice is added by its name and the type of its value: `value` given a valueBoolean.
        typed = name + operation.value_key[len("value"):] if operation.value_key else None
        key = name if _member(place.model, name) else typed
        member = _member(place.model, key) if key else None
        if member is None:
            raise _unapplied(operation, f"{name} is not an element of {place.model.__name__}")
    listed = member[0] if member else isinstance(element.get(key), list)
    if key in element and not listed:
        raise _unapplied(operation, f"the element already has its {name}: replace it")
    value = _shaped(operation.value, member[1] if member else None)
    element[key] = [*element.get(key, []), value] if listed else value


def _listed(container: _Place, name: str, operation: Operation) -> None:
    element = container.get()
    if not isinstance(element, dict):
        raise _unapplied(operation, "its path names no list")
    items = element.get(name, [])
    if not isinstance(items, list):
        raise _unapplied(operation, f"{name} is not a list")
    if operation.type == "insert":
        if operation.index < 0 or operation.index > len(items):
            raise _unapplied(operation, f"index {operation.index} is outside 0 to {len(items)}")
        member = _member(container.model, name) if container.model is not None else None
        value = _shaped(operation.value, member[1] if member else None)
        element[name] = items[:operation.index] + [value] + items[operation.index:]
        return
    source, destination = operation.source, operation.destination
    if not 0 <= source < len(items) or not 0 <= destination <= len(items):
        raise _unapplied(operation, f"the list has {len(items)} elements: the source is one of 0 to {len(items) - 1}, "
                                    f"the destination one of 0 to {len(items)}")
    # The destination is a position of the list as it was, as HL7's test cases have it ("Reorder
    # List #4": 0 to 3 in four puts the first before the fourth, not last).
    items.insert(destination - 1 if destination > source else destination, items.pop(source))
