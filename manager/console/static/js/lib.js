// One import point for the vendored libraries (docs/console.md, "Vendored libraries").
import { h, render } from "../vendor/preact.module.js";
import { useCallback, useEffect, useMemo, useRef, useState } from "../vendor/hooks.module.js";
import htm from "../vendor/htm.module.js";

export const html = htm.bind(h);
export { render, useCallback, useEffect, useMemo, useRef, useState };
