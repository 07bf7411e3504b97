"""The main-loop actor: the one fenced loop per pool that moves jobs between states, by Lua
script."""
