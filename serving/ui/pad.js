// The signature pad: pointer input (mouse, pen and touch), smooth strokes, pen width, undo, clear.
//
// Strokes are kept in coordinates relative to the pad (0..1 on both axes), so the drawing
// survives a resize or a phone turned sideways, and is exported at one fixed size whatever
// the screen: EXPORT_WIDTH x EXPORT_HEIGHT pixels, black ink on white, as a PNG.

export const EXPORT_WIDTH = 800;
export const EXPORT_HEIGHT = 320;
const INK = "#111111";
const PAPER = "#ffffff";
// Pen widths are given in pixels of a pad EXPORT_WIDTH wide and scale with the pad.
const REFERENCE_WIDTH = EXPORT_WIDTH;

export class SignaturePad {
  constructor(canvas, { onChange = () => {} } = {}) {
    this.canvas = canvas;
    this.onChange = onChange;
    this.strokes = [];
    this.current = null;
    this.pointerId = null;
    this.penWidth = 3;
    this.frame = 0;
    canvas.addEventListener("pointerdown", (event) => this.down(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    canvas.addEventListener("pointerup", (event) => this.up(event));
    canvas.addEventListener("pointercancel", (event) => this.up(event));
    // Touch: no scrolling or zooming while drawing (CSS touch-action does the rest).
    canvas.addEventListener("touchstart", (event) => event.preventDefault(), { passive: false });
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  isEmpty() {
    return this.strokes.length === 0;
  }

  setPenWidth(width) {
    this.penWidth = width;
  }

  undo() {
    this.strokes.pop();
    this.redraw();
    this.onChange();
  }

  clear() {
    this.strokes = [];
    this.current = null;
    this.redraw();
    this.onChange();
  }

  // The drawing as a PNG, base64 (standard alphabet, no data: prefix).
  toPngBase64() {
    const canvas = document.createElement("canvas");
    canvas.width = EXPORT_WIDTH;
    canvas.height = EXPORT_HEIGHT;
    paint(canvas.getContext("2d"), this.strokes, EXPORT_WIDTH, EXPORT_HEIGHT);
    return canvas.toDataURL("image/png").split(",", 2)[1];
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: clamp((event.clientX - box.left) / box.width),
      y: clamp((event.clientY - box.top) / box.height),
    };
  }

  down(event) {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    if (this.pointerId !== null) return; // a second finger does not start a second stroke
    event.preventDefault();
    this.pointerId = event.pointerId;
    this.canvas.setPointerCapture(event.pointerId);
    this.current = { width: this.penWidth, points: [this.point(event)] };
    this.strokes.push(this.current);
    this.schedule();
  }

  move(event) {
    if (event.pointerId !== this.pointerId || !this.current) return;
    event.preventDefault();
    // Coalesced events carry the points the browser merged into this one: smoother fast strokes.
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) {
      this.current.points.push(this.point(each));
    }
    this.schedule();
  }

  up(event) {
    if (event.pointerId !== this.pointerId) return;
    if (this.current && event.type === "pointerup") this.current.points.push(this.point(event));
    this.pointerId = null;
    this.current = null;
    this.redraw();
    this.onChange();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.redraw();
    });
  }

  resize() {
    const box = this.canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(box.width * ratio));
    const height = Math.max(1, Math.round(box.height * ratio));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    this.redraw();
  }

  redraw() {
    paint(this.canvas.getContext("2d"), this.strokes, this.canvas.width, this.canvas.height);
  }
}

function clamp(value) {
  return Math.min(1, Math.max(0, value));
}

// White paper, then each stroke as quadratic curves through the midpoints of its points.
function paint(context, strokes, width, height) {
  context.save();
  context.fillStyle = PAPER;
  context.fillRect(0, 0, width, height);
  context.strokeStyle = INK;
  context.fillStyle = INK;
  context.lineCap = "round";
  context.lineJoin = "round";
  for (const stroke of strokes) {
    const points = stroke.points.map((p) => ({ x: p.x * width, y: p.y * height }));
    const lineWidth = Math.max(1, (stroke.width * width) / REFERENCE_WIDTH);
    if (points.length === 1) {
      context.beginPath();
      context.arc(points[0].x, points[0].y, lineWidth / 2, 0, 2 * Math.PI);
      context.fill();
      continue;
    }
    context.lineWidth = lineWidth;
    context.beginPath();
    context.moveTo(points[0].x, points[0].y);
    for (let i = 1; i < points.length - 1; i++) {
      const middle = { x: (points[i].x + points[i + 1].x) / 2, y: (points[i].y + points[i + 1].y) / 2 };
      context.quadraticCurveTo(points[i].x, points[i].y, middle.x, middle.y);
    }
    const last = points[points.length - 1];
    context.lineTo(last.x, last.y);
    context.stroke();
  }
  context.restore();
}
