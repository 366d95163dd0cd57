"""ferrocorn: parse an APP spec the way gunicorn does, with literal-only factory arguments."""
import ast


class SpecError(Exception):
    pass


def _literal(node, src):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise SpecError(
            f"arguments in {src!r} must be Python literals (strings, numbers, tuples, lists, "
            f"dicts, booleans, None); {ast.unparse(node)!r} is not"
        ) from None


def parse(spec):
    """Return (module, [attribute names], None | (args, kwargs))."""
    module, sep, src = spec.partition(":")
    module = module.strip()
    src = src.strip() if sep else "application"
    if not module:
        raise SpecError("the module name is empty")
    if not all(part.isidentifier() for part in module.split(".")):
        raise SpecError(f"{module!r} is not a module name (dotted Python identifiers)")
    if not src:
        raise SpecError("the application name after ':' is empty")
    try:
        expr = ast.parse(src, mode="eval").body
    except SyntaxError:
        raise SpecError(f"{src!r} is not an attribute name or a call of one") from None
    call = None
    if isinstance(expr, ast.Call):
        args = []
        kwargs = {}
        for node in expr.args:
            if isinstance(node, ast.Starred):
                raise SpecError(f"*args are not allowed in {src!r}")
            args.append(_literal(node, src))
        for kw in expr.keywords:
            if kw.arg is None:
                raise SpecError(f"**kwargs are not allowed in {src!r}")
            kwargs[kw.arg] = _literal(kw.value, src)
        call = (tuple(args), kwargs)
        expr = expr.func
    names = []
    while isinstance(expr, ast.Attribute):
        names.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        raise SpecError(f"{src!r} is not an attribute name or a call of one")
    names.append(expr.id)
    names.reverse()
    return module, names, call
