"""A small real Flask app for ferrocorn's tests: `ferrocorn --chdir tests/apps/flask_demo demo_flask:app`.

GET  /?name=N     renders templates/index.html (Jinja, autoescaped) with the stored items
POST /items       form field `name`, stored in sqlite ($FLASK_DEMO_DB), 201
GET  /items.json  the stored items as JSON (a sqlite query)
POST /upload      multipart file `file`: its size and sha256 (werkzeug parses wsgi.input)
"""

import hashlib
import os
import sqlite3
import tempfile

from flask import Flask, jsonify, render_template, request

app = Flask(__name__)
DB = os.environ.get("FLASK_DEMO_DB", os.path.join(tempfile.gettempdir(), "ferrocorn-flask-demo.sqlite3"))


def db():
    conn = sqlite3.connect(DB)
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    return conn


def items():
    with db() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM items ORDER BY id")]


@app.get("/")
def index():
    return render_template("index.html", name=request.args.get("name", "world"), items=items())


@app.post("/items")
def add_item():
    name = request.form.get("name", "").strip()
    if not name:
        return "missing form field 'name'\n", 400
    with db() as conn:
        conn.execute("INSERT INTO items (name) VALUES (?)", (name,))
    return f"added {name}\n", 201


@app.get("/items.json")
def items_json():
    return jsonify(items=items(), sqlite=sqlite3.sqlite_version)


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return f"{f.filename} {len(data)} {hashlib.sha256(data).hexdigest()}\n"
