// The drawing page: strokes on a canvas (pointer events: mouse, touch, pen), sent as a PNG to POST predict
// while drawing, at most one request in flight; the answer is shown as bars beside the 28x28 image the net was
// given. Every address is relative to the page, so the page works behind a reverse proxy under a prefix.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const result = document.getElementById("result");
const label = document.getElementById("label");
const confidence = document.getElementById("confidence");
const bars = document.getElementById("bars");
const message = document.getElementById("message");
const keyForm = document.getElementById("key-form");

const KEY_STORE = "mnist-serve-api-key";
const MIN_INTERVAL_MS = 60; // between two requests while drawing
const SUBJECT = {mnist: "a digit", fashion_mnist: "a piece of clothing", kmnist: "a Kuzushiji character"};

let classes = [];
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let drawn = false;      // the pad holds ink
let drawing = null;     // the last point of the stroke in progress
let generation = 0;     // bumped by Clear: answers to older drawings are dropped
let inFlight = false;
let dirty = false;      // the drawing changed since the last request was sent
let timer = null;
let lastSent = 0;

function headers() {
  return apiKey ? {"X-API-Key": apiKey} : {};
}

// ------------------------------------------------------------------------------------------ drawing
function clearPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
  generation += 1;
  dirty = false;
  showEmpty();
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return {x: (event.clientX - box.left) * pad.width / box.width, y: (event.clientY - box.top) * pad.height / box.height};
}

function penWidth(event) {
  return event.pointerType === "pen" && event.pressure > 0 ? 8 + 16 * event.pressure : 18;
}

function stroke(from, to, event) {
  ink.strokeStyle = "#000";
  ink.lineWidth = penWidth(event);
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
}

function dot(at, event) {
  ink.fillStyle = "#000";
  ink.beginPath();
  ink.arc(at.x, at.y, penWidth(event) / 2, 0, 2 * Math.PI);
  ink.fill();
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = point(event);
  dot(drawing, event);
  drawn = true;
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (drawing === null) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const each of events.length ? events : [event]) {
    const next = point(each);
    stroke(drawing, next, each);
    drawing = next;
  }
  schedule();
});

for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (drawing === null) return;
    drawing = null;
    schedule();
  });
}

document.getElementById("clear").addEventListener("click", clearPad);

// ---------------------------------------------------------------------------------------- predicting
function schedule() {
  if (!drawn) return;
  dirty = true;
  result.dataset.pending = "true";
  if (inFlight || timer !== null) return;
  timer = setTimeout(send, Math.max(0, lastSent + MIN_INTERVAL_MS - performance.now()));
}

async function send() {
  timer = null;
  dirty = false;
  inFlight = true;
  lastSent = performance.now();
  const sent = generation;
  try {
    const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("image", blob, "drawing.png");
    form.append("return_image", "true");
    const response = await fetch("predict", {method: "POST", body: form, headers: headers()});
    const body = await response.json().catch(() => ({detail: `${response.status} ${response.statusText}`}));
    if (sent === generation) {
      if (response.ok) show(body);
      else if (response.status === 401 || response.status === 403) askForKey(body.detail);
      else showMessage(body.detail || `${response.status} ${response.statusText}`);
    }
  } catch (error) {
    showMessage(`The server does not answer (${error.message}).`);
  } finally {
    inFlight = false;
    if (dirty && drawn) schedule();
    else result.dataset.pending = "false";
  }
}

// ------------------------------------------------------------------------------------------ showing
function buildBars() {
  bars.replaceChildren(...classes.map((name, index) => {
    const item = document.createElement("li");
    item.dataset.index = String(index);
    item.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="p"></span>';
    item.querySelector(".name").textContent = name;
    return item;
  }));
}

function showEmpty() {
  label.textContent = "\u2013";
  label.dataset.label = "";
  confidence.textContent = "";
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  for (const item of bars.children) setBar(item, 0, false);
  message.textContent = "Draw in the box.";
  result.dataset.pending = "false";
}

function setBar(item, p, top) {
  item.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
  item.querySelector(".p").textContent = `${(100 * p).toFixed(1)}%`;
  item.classList.toggle("top", top);
}

function show(answer) {
  label.textContent = answer.class_name;
  label.dataset.label = String(answer.label);
  confidence.textContent = `${(100 * answer.probabilities[answer.label]).toFixed(1)}% sure`;
  answer.probabilities.forEach((p, index) => bars.children[index] && setBar(bars.children[index], p, index === answer.label));
  if (answer.image) {
    const pixels = seen.createImageData(28, 28);
    answer.image.flat().forEach((v, i) => pixels.data.set([v, v, v, 255], 4 * i));
    seen.putImageData(pixels, 0, 0);
  }
  message.textContent = "";
}

function showMessage(text) {
  label.textContent = "?";
  label.dataset.label = "";
  confidence.textContent = "";
  message.textContent = text;
}

// --------------------------------------------------------------------------------------- the server
function askForKey(detail) {
  keyForm.hidden = false;
  document.getElementById("key").focus();
  showMessage(apiKey ? `The key was refused (${detail}).` : "This server needs its API key.");
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = document.getElementById("key").value.trim();
  sessionStorage.setItem(KEY_STORE, apiKey);
  connect();
});

async function connect() {
  try {
    const response = await fetch("info", {headers: headers()});
    if (response.status === 401 || response.status === 403) return askForKey(response.statusText);
    const info = (await response.json()).model;
    keyForm.hidden = true;
    classes = info.classes;
    document.getElementById("what").textContent = SUBJECT[info.dataset] || "a digit";
    document.title = `Draw ${SUBJECT[info.dataset] || "a digit"}`;
    document.getElementById("model").textContent = `${info.checkpoint} \u00b7 ${info.net} \u00b7 ${info.dataset}`;
    buildBars();
    showEmpty();
    if (drawn) schedule();
  } catch (error) {
    showMessage(`The server does not answer (${error.message}).`);
  }
}

clearPad();
connect();
